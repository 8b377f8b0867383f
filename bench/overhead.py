"""What the pipeline costs: the same demo-model request run directly in-process and through the whole
stack (`diffbus up`: HTTP → JetStream → gpu_worker → object store → projector → HTTP download).

    .venv/bin/python bench/overhead.py [--size 64] [--steps 20] [--runs 20]

The two are interleaved run by run. Prints median/p95 of each, the overhead in ms, the ratio
direct/e2e, and the CPU seconds each way (the e2e figure sums every process of the stack).
Writes bench/results/overhead.json.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import nats
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas import subjects  # noqa: E402
from services.config import load  # noqa: E402
from services.embedded import free_port  # noqa: E402

KEY = "bench-key-0123456789"


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / tick
    return own + sum(tree_cpu_seconds(int(c)) for c in out.split())


def direct_runner(config, body: dict):
    """A function that runs the request in-process once: (wall s, cpu s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from schemas.jobs import Txt2Img
    from services import imaging
    from services.gpu_worker import generate
    from services.gpu_worker.pipelines import ModelRegistry

    pipe = ModelRegistry(config).pipeline("demo")
    spec = Txt2Img(model="demo", prompt=body["prompt"], width=body["width"], height=body["height"],
                   steps=body["num_inference_steps"], guidance_scale=7.5, seed=body["seed"])

    def once() -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        [img] = generate.run(pipe, spec, None)
        imaging.encode(img, spec.output_format, imaging.infotext(spec, spec.seed))
        return time.perf_counter() - t, time.process_time() - c

    return once


class EndToEnd:
    """Submit over HTTP, learn of completion from the task's terminal event on NATS (polling HTTP
    would steal CPU from the worker on a small machine), read the task over HTTP, download the image."""

    def __init__(self, base: str, nats_url: str, body: dict):
        self.base, self.nats_url, self.body = base, nats_url, body
        self.headers = {"X-API-Key": KEY}

    async def __aenter__(self):
        self.nc = await nats.connect(self.nats_url)
        self.done = await self.nc.subscribe(subjects.task_event("*", "completed"))
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.session.close()
        await self.nc.close()

    async def once(self) -> float:
        s, t = self.session, time.perf_counter()
        async with s.post(f"{self.base}/api/v1/generate", json=self.body, headers=self.headers) as r:
            task_id = (await r.json())["task_id"]
        while (await self.done.next_msg(timeout=60)).subject != subjects.task_event(task_id, "completed"):
            pass
        while True:
            async with s.get(f"{self.base}/api/v1/tasks/{task_id}", headers=self.headers) as r:
                task = await r.json()
            if task["status"] == "completed":
                break
            await asyncio.sleep(0.001)
        async with s.get(task["result_url"]) as r:
            await r.read()
        return time.perf_counter() - t


async def interleaved(direct, e2e: EndToEnd, runs: int, stack_pid: int):
    """Alternate the two, so drift in the machine's speed hits both alike."""
    d_wall, d_cpu, e_wall, e_cpu = [], [], [], []
    direct(), await e2e.once()  # warm-up
    for _ in range(runs):
        wall, cpu = direct()
        d_wall.append(wall)
        d_cpu.append(cpu)
        cpu0 = tree_cpu_seconds(stack_pid)
        e_wall.append(await e2e.once())
        e_cpu.append(tree_cpu_seconds(stack_pid) - cpu0)
    return d_wall, d_cpu, e_wall, e_cpu


def start_stack(tmp: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    nats_url = f"nats://127.0.0.1:{free_port()}"
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_dir": str(tmp / "data"), "api": {"port": port, "keys": [KEY]}, "nats": {"url": nats_url},
        "models": [{"name": "demo", "path": str(tmp / "demo")}]}))
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "up.log", "wb"), cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            import urllib.request

            if json.load(urllib.request.urlopen(f"{base}/health", timeout=1)).get("model_loaded"):
                return proc, base, nats_url
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"stack did not start; see {tmp / 'up.log'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    body = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size,
            "num_inference_steps": args.steps, "seed": 42}
    with tempfile.TemporaryDirectory(prefix="diffbus-bench-") as d:
        tmp = Path(d)
        subprocess.run([sys.executable, "-m", "services.cli", "demo-model", str(tmp / "demo")],
                       check=True, capture_output=True, cwd=ROOT)
        config = load(None, {}, models=[{"name": "demo", "path": str(tmp / "demo")}],
                      data_dir=str(tmp / "data"))
        direct = direct_runner(config, body)
        proc, base, nats_url = start_stack(tmp)
        try:
            async def measure():
                async with EndToEnd(base, nats_url, body) as e2e:
                    return await interleaved(direct, e2e, args.runs, proc.pid)

            d_wall, d_cpu, e_wall, e_cpus = asyncio.run(measure())
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    result = {
        "request": body, "runs": args.runs, "cpus": os.cpu_count(),
        "direct": {"median_s": statistics.median(d_wall), "p95_s": p95(d_wall),
                   "cpu_s": statistics.median(d_cpu)},
        "e2e": {"median_s": statistics.median(e_wall), "p95_s": p95(e_wall), "cpu_s": statistics.median(e_cpus)},
    }
    result["overhead_ms"] = 1000 * (result["e2e"]["median_s"] - result["direct"]["median_s"])
    result["ratio_direct_over_e2e"] = result["direct"]["median_s"] / result["e2e"]["median_s"]
    print(f"{args.size}x{args.size}, {args.steps} steps, {args.runs} runs, {os.cpu_count()} cores")
    print(f"{'':8} {'median ms':>10} {'p95 ms':>10} {'cpu ms':>10}")
    for name in ("direct", "e2e"):
        r = result[name]
        print(f"{name:8} {1000 * r['median_s']:10.1f} {1000 * r['p95_s']:10.1f} {1000 * r['cpu_s']:10.1f}")
    print(f"overhead {result['overhead_ms']:.1f} ms median; direct/e2e = {result['ratio_direct_over_e2e']:.3f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
