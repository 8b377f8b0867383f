"""A real diffbus for tests: nats-server with JetStream in a temp dir, and each service as its own
process on free loopback ports, started and stopped one by one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from services.cli.embedded import EmbeddedNats, free_port

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789"
ADMIN = "admin-key-0123456789"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SDWM_SECRET = "qwert12345"  # the seed document's webApiSecret


class Stack:
    def __init__(self, root: Path, demo_model: Path, upscalers: Path | None = None, loras: Path | None = None,
                 **overrides):
        self.root = root
        self.nats_url = f"nats://127.0.0.1:{free_port()}"
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        config = {
            "data_dir": str(root / "data"),
            "nats": {"url": self.nats_url},
            "api": {"port": self.api_port, "keys": [
                {"key": ALICE, "name": "alice"}, {"key": BOB, "name": "bob"},
                {"key": ADMIN, "name": "ops", "admin": True}]},
            "limits": {"max_steps": 60},
            "models": [{"name": "demo", "path": str(demo_model), "width": 64, "height": 64}],
            "worker": {"ack_wait_s": 3, "announce_every_s": 1, **({"lora_dir": str(loras)} if loras else {})},
            "upscalers": [] if upscalers is None else [
                {"name": "R-ESRGAN 4x+", "path": str(upscalers / "compact-x4.safetensors")},
                {"name": "compact-pth", "path": str(upscalers / "compact-x4.pth")},
                {"name": "ESRGAN_4x", "path": str(upscalers / "esrgan-x4.pth")}],
            "upscaler": {"tile_size": 48, "tile_overlap": 8},  # small tiles: tiling runs in every test
            "progress": {"min_interval_s": 0, "preview_every": 2},  # every step, for exact assertions
            "sdwm": {"secret": SDWM_SECRET, "owner": "alice"},  # sd_work_manager tasks are alice's
            "notifier": {"secret": WEBHOOK_SECRET, "allowed_networks": ["127.0.0.0/8"], "timeout_s": 1,
                         "retry_schedule_s": [0.3, 0.3, 0.3]},
        }
        for section, values in overrides.items():
            config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.nats = EmbeddedNats(self.nats_url, root / "nats")
        self.procs: list[subprocess.Popen] = []

    def start_nats(self) -> "Stack":
        self.nats.start()
        return self

    def start(self, service: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log_path = self.root / f"{service}-{len(self.procs)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", service, "--config", str(self.config_path), *args],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        proc.log_path = log_path
        self.procs.append(proc)
        return proc

    def start_all(self, workers: int = 1) -> "Stack":
        self.start_nats()
        self.start("projector")
        self.start("notifier")
        self.start("upscaler")
        for _ in range(workers):
            self.start("gpu-worker")
        self.start("api")
        return self

    @staticmethod
    def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        proc.stopped_on_purpose = True
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def crashed(self) -> list[subprocess.Popen]:
        """Services that exited without being asked to."""
        return [p for p in self.procs if p.poll() is not None and not getattr(p, "stopped_on_purpose", False)]

    def logs(self) -> str:
        return "\n".join(f"--- {p.args[3]} (pid {p.pid}) ---\n" + Path(p.log_path).read_text()[-3000:]
                         for p in self.procs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.nats.stop()


def wait_until(predicate, timeout: float, what: str, stack: Stack | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{stack.logs() if stack else ''}")
