"""A fleet of workers behind one NATS cluster: does dispatch keep up?

    .venv/bin/python bench/fleet.py [--workers 1 10 50 100] [--job-s 1.0] [--flood 1000] | --tiny

A 3-node nats-server cluster on loopback (streams with 3 replicas). Workers are the real worker runtime
(services/worker: pulling high before normal, fair sharing, heartbeats, settling, cancels) with a
simulated device: the job is held for `--job-s` seconds (asyncio.sleep) instead of running diffusers,
so no torch is loaded. They run as in-process runtimes, 25 to a process, each with its own NATS
connection (2 cores cannot hold 100 processes). Tasks are submitted by the API's own code
(services/api/tasks.Tasks.submit); what happened is read from the task events.

For each worker count W:
- paced: tasks at half the fleet's capacity (W / job_s / 2 a second) for `--paced-s`: dispatch latency,
  job published -> started, p50/p99;
- saturated: a backlog of W x `--rounds` normal tasks, then W high ones: completed/s against the ideal
  W / job_s, each worker's busy fraction (time inside jobs over the run), the gap between a worker's
  jobs p50/p99, and how many normal tasks started after a high one was published and before it started
  (high before normal: at most about W, those already being picked up).
Then, with the largest W, key A queues `--flood` tasks and key B one, fair sharing on and off: B's
wait (published -> started).
"""

import argparse
import asyncio
import contextlib
import math
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import ROOT, machine, percentile, write_result  # noqa: I001 - bench/ is on sys.path when run

from schemas import subjects
from schemas.codec import decode_event
from schemas.jobs import Txt2Img
from schemas.subjects import PRIORITY_ORDER, Priority
from schemas.workers import WorkerAnnouncement
from services import bus
from services.api.auth import Principal
from services.api.tasks import Tasks
from services.config import load
from services.worker import Done, Runtime, WorkerService
from tests.cluster import NatsCluster

MODEL = "sim"
PER_PROCESS = 25
SPEC = Txt2Img(model=MODEL, prompt="simulated", width=64, height=64, steps=1, guidance_scale=7.0, seed=1)


class SimulatedWorker(WorkerService):
    """The real runtime; the device holds each job for `job_s` seconds."""

    kind = "gpu"
    fair_shared = True

    def __init__(self, job_s: float):
        self.job_s = job_s

    def queues(self) -> list[tuple[str, str]]:
        return [(subjects.generate_job(p, MODEL), subjects.gpu_durable(MODEL, p)) for p in PRIORITY_ORDER]

    def announcement(self, worker_id: str) -> WorkerAnnouncement:
        return WorkerAnnouncement(worker=worker_id, kind=self.kind, models_served=[MODEL], models_loaded=[MODEL],
                                  device="simulated", at=time.time())

    async def handle(self, works) -> list:
        await asyncio.sleep(self.job_s)
        return [Done([]) for _ in works]


async def serve_workers(config_path: str, first: int, count: int, job_s: float) -> None:
    """A worker process: `count` runtimes until SIGTERM."""
    config = load(config_path)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    conns = [await bus.connect(config, f"sim-{first + i}") for i in range(count)]
    runtimes = [Runtime(config, nc, SimulatedWorker.kind, f"sim-{first + i}") for i, nc in enumerate(conns)]
    await asyncio.gather(*(r.run(SimulatedWorker(job_s), stop) for r in runtimes))
    for nc in conns:
        await nc.drain()


class Fleet:
    """Worker processes for one run, and what their tasks' events say."""

    def __init__(self, root: Path, urls: list[str], workers: int, job_s: float, fair: bool):
        self.workers, self.job_s = workers, job_s
        raw = {"data_dir": str(root / "data"), "nats": {"servers": urls, "url": urls[0], "replicas": 3},
               "models": [{"name": MODEL, "path": str(root / "none")}], "worker": {"ack_wait_s": 30},
               "quotas": {"max_queued": None, "fair_sharing": fair}}
        self.config_path = root / f"fleet-{workers}-{fair}.yaml"
        self.config_path.write_text(yaml.safe_dump(raw))
        self.config = load(self.config_path)
        self.procs: list[subprocess.Popen] = []
        self.published: dict[str, float] = {}
        self.started: dict[str, tuple[float, str]] = {}  # task -> (at, worker)
        self.completed: dict[str, float] = {}

    async def __aenter__(self) -> "Fleet":
        self.stack = contextlib.AsyncExitStack()
        self.nc = await self.stack.enter_async_context(bus.serving(self.config, "fleet-bench"))
        self.js = self.nc.jetstream()
        self.tasks = Tasks(self.config, self.nc)
        self.sub = await self.nc.subscribe(subjects.task_event("*", "*"), cb=self._on_event)
        for first in range(0, self.workers, PER_PROCESS):
            self.procs.append(subprocess.Popen(
                [sys.executable, __file__, "--serve", str(self.config_path), str(first),
                 str(min(PER_PROCESS, self.workers - first)), str(self.job_s)], cwd=ROOT))
        await self._until_announced()
        return self

    async def __aexit__(self, *exc) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        await self.sub.unsubscribe()
        await self.stack.aclose()

    async def _until_announced(self, timeout: float = 120) -> None:
        kv = await self.js.key_value(subjects.WORKERS_BUCKET)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                live = [k for k in await kv.keys() if k.startswith("sim-")]
            except Exception:  # noqa: BLE001 - no keys yet
                live = []
            if len(live) >= self.workers:
                await asyncio.sleep(1.0)  # their consumers are made right after the first announcement
                return
            await asyncio.sleep(0.2)
        raise SystemExit(f"only {len(live)} of {self.workers} workers announced themselves")

    async def _on_event(self, msg) -> None:
        name = msg.subject.rsplit(".", 1)[1]
        if name == "started":
            event = decode_event(msg.data)
            self.started.setdefault(event.task_id, (event.at, event.worker))
        elif name == "completed":
            self.completed.setdefault(decode_event(msg.data).task_id, time.time())

    async def submit(self, owner: str = "bench", priority: Priority = Priority.NORMAL) -> str:
        record = await self.tasks.submit(SPEC, Principal(owner), dialect="native", priority=priority)
        self.published[record.task_id] = time.time()
        return record.task_id

    async def until_done(self, task_ids, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(t in self.completed for t in task_ids):
            if time.monotonic() > deadline:
                missing = sum(t not in self.completed for t in task_ids)
                raise SystemExit(f"{missing} of {len(task_ids)} tasks not completed in {timeout:.0f}s")
            await asyncio.sleep(0.05)

    def latency_ms(self, task_ids) -> dict:
        waits = [(self.started[t][0] - self.published[t]) * 1000 for t in task_ids]
        return {"p50_ms": round(percentile(waits, 50), 1), "p99_ms": round(percentile(waits, 99), 1)}


async def paced(fleet: Fleet, seconds: float) -> dict:
    rate = fleet.workers / fleet.job_s / 2
    ids, start = [], time.monotonic()
    for i in range(max(1, int(seconds * rate))):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        ids.append(await fleet.submit())
    await fleet.until_done(ids, seconds + 30 * fleet.job_s + 60)
    return {"tasks": len(ids), "per_s": round(rate, 2), "dispatch": fleet.latency_ms(ids)}


async def saturated(fleet: Fleet, rounds: int) -> dict:
    w, job_s = fleet.workers, fleet.job_s
    normal = list(await asyncio.gather(*(fleet.submit() for _ in range(w * rounds))))
    await asyncio.sleep(min(job_s, 0.5))
    high = list(await asyncio.gather(*(fleet.submit(priority=Priority.HIGH) for _ in range(w))))
    everything = normal + high
    await fleet.until_done(everything, (rounds + 1) * job_s * 3 + 120)
    first = min(fleet.started[t][0] for t in everything)
    last = max(fleet.completed[t] for t in everything)
    busy: dict[str, float] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    for t in everything:
        at, worker = fleet.started[t]
        busy[worker] = busy.get(worker, 0.0) + fleet.completed[t] - at
        spans.setdefault(worker, []).append((at, fleet.completed[t]))
    gaps = [(b[0] - a[1]) * 1000 for s in spans.values() for a, b in zip(sorted(s), sorted(s)[1:])]
    fractions = sorted(v / (last - first) for v in busy.values())
    return {
        "tasks": len(everything), "wall_s": round(last - first, 2),
        "completed_per_s": round(len(everything) / (last - first), 2), "ideal_per_s": round(w / job_s, 2),
        "ratio_to_ideal": round(len(everything) / (last - first) / (w / job_s), 3),
        "workers_used": len(busy), "busy_fraction": {"min": round(fractions[0], 3),
                                                     "median": round(fractions[len(fractions) // 2], 3)},
        "gap_between_jobs": {"p50_ms": round(percentile(gaps, 50), 1), "p99_ms": round(percentile(gaps, 99), 1)},
        "normal_started_while_high_waited": sum(any(fleet.published[h] < fleet.started[t][0] < fleet.started[h][0]
                                                    for h in high) for t in normal),
        "high_wait": fleet.latency_ms(high),
    }


async def fairness(root: Path, urls: list[str], workers: int, job_s: float, flood: int, fair: bool) -> dict:
    async with Fleet(root, urls, workers, job_s, fair) as fleet:
        flooded = list(await asyncio.gather(*(fleet.submit("key-a") for _ in range(flood))))
        single = await fleet.submit("key-b")
        await fleet.until_done([single], flood / workers * job_s * 3 + 120)
        b_wait = fleet.started[single][0] - fleet.published[single]
        ahead = sum(fleet.started.get(t, (math.inf,))[0] < fleet.started[single][0] for t in flooded)
        await fleet.until_done(flooded, flood / workers * job_s * 3 + 120)
    return {"fair_sharing": fair, "b_wait_s": round(b_wait, 2), "a_tasks_started_before_b": ahead,
            "a_backlog_s": round(flood / workers * job_s, 1)}


async def measure(root: Path, args) -> dict:
    cluster = NatsCluster(root / "nats").start()
    try:
        levels = []
        for w in args.workers:
            async with Fleet(root, cluster.urls, w, args.job_s, fair=True) as fleet:
                level = {"workers": w, "processes": math.ceil(w / PER_PROCESS),
                         "paced": await paced(fleet, args.paced_s), "saturated": await saturated(fleet, args.rounds)}
            print(f"{w} workers: {level}", flush=True)
            levels.append(level)
        w = max(args.workers)
        fair = [await fairness(root, cluster.urls, w, args.job_s, args.flood, on) for on in (True, False)]
    finally:
        cluster.stop()
    return {"job_s": args.job_s, "levels": levels, "fairness": {"workers": w, "flood": args.flood, "runs": fair},
            "cluster": "3 nats-server nodes on loopback, streams and buckets with 3 replicas",
            "targets": {"ratio_to_ideal": 0.9, "busy_fraction": 0.9, "dispatch_p99_ms": 50},
            "machine": machine()}


def print_table(r: dict) -> None:
    print(f"\njob {r['job_s']} s   workers  completed/s  ideal  ratio  busy min/median  dispatch p50/p99 ms  "
          "gap p50/p99 ms  normal during high")
    for level in r["levels"]:
        s, p = level["saturated"], level["paced"]["dispatch"]
        print(f"{level['workers']:>17} {s['completed_per_s']:>12} {s['ideal_per_s']:>6} {s['ratio_to_ideal']:>6} "
              f"{s['busy_fraction']['min']:>8}/{s['busy_fraction']['median']:<8} {p['p50_ms']:>9}/{p['p99_ms']:<9} "
              f"{s['gap_between_jobs']['p50_ms']:>8}/{s['gap_between_jobs']['p99_ms']:<8} "
              f"{s['normal_started_while_high_waited']:>5}")
    for run in r["fairness"]["runs"]:
        print(f"fair sharing {'on ' if run['fair_sharing'] else 'off'}: key B waited {run['b_wait_s']} s "
              f"({run['a_tasks_started_before_b']} of A's {r['fairness']['flood']} started first; "
              f"A's backlog {run['a_backlog_s']} s)")


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        config_path, first, count, job_s = sys.argv[2:6]
        asyncio.run(serve_workers(config_path, int(first), int(count), float(job_s)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 10, 50, 100])
    parser.add_argument("--job-s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=8, help="backlog per worker in the saturated run")
    parser.add_argument("--paced-s", type=float, default=10.0)
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--tiny", action="store_true", help="1 and 3 workers, short jobs: for the smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.workers, args.job_s, args.rounds, args.paced_s, args.flood = [1, 3], 0.2, 2, 1.0, 12
    with tempfile.TemporaryDirectory(prefix="diffbus-fleet-") as tmp:
        result = asyncio.run(measure(Path(tmp), args))
    print_table(result)
    write_result("fleet-tiny" if args.tiny else "fleet", result)


if __name__ == "__main__":
    main()
