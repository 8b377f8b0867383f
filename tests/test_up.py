"""`diffbus up` (what `make run` calls): everything on one machine, a key when none is configured,
and a clean stop on Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from services.cli.embedded import free_port

from .conftest import health
from .stack import wait_until


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def log_tail(log):
    class Tail:  # wait_until shows a stack's logs; this shows up's
        def logs(self) -> str:
            return log.read_text()[-3000:]
    return Tail()


def test_up_serves_the_demo_model_with_a_generated_key_restarts_its_nats_server_and_stops_on_ctrl_c(tmp_path):
    api_port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "api": {"port": api_port},
                                      "nats": {"url": f"nats://127.0.0.1:{free_port()}"}}))
    base = f"http://127.0.0.1:{api_port}"
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--config", str(config)],
                              stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (health(base) or {}).get("model_loaded"), 120, "diffbus up to serve")
        key = (tmp_path / "data" / "api-key").read_text().strip()
        text = log.read_text()
        assert key in text and f"curl -s -X POST {base}/api/v1/generate" in text
        assert "serving the built-in 'demo' model" in text
        assert (tmp_path / "data" / "webhook-secret").read_text().startswith("whsec_")

        request = urllib.request.Request(
            f"{base}/api/v1/generate", data=json.dumps({"prompt": "x", "num_inference_steps": 2}).encode(),
            headers={"X-API-Key": key, "Content-Type": "application/json"})
        with urllib.request.urlopen(request) as resp:
            assert json.load(resp)["status"] == "pending"

        children = children_of(up.pid)
        assert len(children) == 6  # nats-server, projector, notifier, upscaler, gpu-worker, api

        # Its nats-server crashes: `up` says so and starts it again; the services carry on.
        [nats_server] = [pid for pid in children if b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        os.kill(nats_server, signal.SIGKILL)
        wait_until(lambda: "nats-server exited" in log.read_text(), 30, "up to notice", log_tail(log))
        wait_until(lambda: (health(base) or {}).get("status") == "ok", 60, "/health ok again", log_tail(log))
        with urllib.request.urlopen(request) as resp:
            assert json.load(resp)["status"] == "pending"
        children = [pid for pid in children if pid != nats_server] + [
            pid for pid in children_of(up.pid) if pid not in children]
        assert len(children) == 6 and all(alive(pid) for pid in children)

        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        assert not [pid for pid in children if alive(pid)]
        assert "Traceback" not in log.read_text()
    finally:
        if up.poll() is None:
            up.kill()
