"""What every benchmark shares: a `diffbus up` stack with its own config in a temp dir, percentiles,
the machine's description, and writing bench/results/<name>.json."""

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.cli.embedded import free_port  # noqa: E402

KEY = "bench-key-0123456789"
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or ROOT / "bench" / "results")  # the smoke test writes elsewhere


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)] if ordered else float("nan")


def machine() -> dict:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
            "load_avg_1m_at_start": round(load[0], 2)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def build_demo_model(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "services.cli", "demo-model", str(path)], check=True,
                   capture_output=True, cwd=ROOT)
    return path


class Stack:
    """`diffbus up` (what `make run` starts) with the given config, as a subprocess."""

    def __init__(self, tmp: Path, **config):
        self.tmp = tmp
        self.port = free_port()
        self.nats_url = f"nats://127.0.0.1:{free_port()}"
        self.base = f"http://127.0.0.1:{self.port}"
        tmp.mkdir(parents=True, exist_ok=True)
        base = {"data_dir": str(tmp / "data"), "api": {"port": self.port, "keys": [KEY]},
                "nats": {"url": self.nats_url}}
        for section, values in config.items():
            base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(base))
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> "Stack":
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--config", str(self.config_path)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.tmp / "up.log", "wb"), cwd=ROOT)
        return self

    def wait_ready(self, timeout: float = 180) -> "Stack":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=1) as r:
                    if json.load(r).get("model_loaded"):
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"stack did not start; see {self.tmp / 'up.log'}:\n"
                         + (self.tmp / "up.log").read_text()[-3000:])

    def signal_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def wait_stopped(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def stacks(tmp: Path, configs: dict[str, dict]):
    """Several stacks, started and stopped side by side (an idle stack costs next to nothing): name -> Stack."""
    running = {name: Stack(tmp / name, **config) for name, config in configs.items()}
    try:
        for stack in running.values():
            stack.spawn()
        for stack in running.values():
            stack.wait_ready()
        yield running
    finally:
        for stack in running.values():
            stack.signal_stop()
        for stack in running.values():
            stack.wait_stopped()


@contextmanager
def running(tmp: Path, **config):
    with stacks(tmp.parent, {tmp.name: config}) as started:
        yield started[tmp.name]


def demo_model(tmp: Path) -> Path:
    """The demo model: BENCH_DEMO_MODEL when set (the smoke test builds it once), else built in `tmp`."""
    given = os.environ.get("BENCH_DEMO_MODEL")
    return Path(given) if given else build_demo_model(tmp / "demo")


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / tick
    return own + sum(tree_cpu_seconds(int(c)) for c in out.split())


async def run_task(session, base: str, endpoint: str, body: dict) -> tuple[dict, float]:
    """What a client does: POST the request, follow GET /api/v1/tasks/{id}/events (SSE) until the task
    ends, download its image. (task view, wall seconds)."""
    headers = {"X-API-Key": KEY}
    t = time.perf_counter()
    async with session.post(f"{base}{endpoint}", json=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{endpoint} answered {r.status}: {await r.text()}")
        task_id = (await r.json())["task_id"]
    event, task = None, None
    async with session.get(f"{base}/api/v1/tasks/{task_id}/events", headers=headers) as r:
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("completed", "failed", "cancelled"):
                task = json.loads(line[6:])
                break
    if event != "completed":
        raise RuntimeError(f"task {task_id} ended {event}: {task}")
    async with session.get(task["result_url"]) as r:
        await r.read()
    return task, time.perf_counter() - t
