"""Control plane: many cheap jobs (a Lanczos 2× upscale of a 64×64 PNG) through diffbus, and the same
function as a Celery task over Redis, side by side in one run.

    .venv/bin/python bench/control_plane.py [--tasks 1000] [--concurrency 1 16 64] [--rounds 4] [--download]
                                            [--no-baseline]

At each concurrency C, C clients share the work in two phases, for both systems:
- burst: each client submits its share without waiting, then awaits its results in order. accepted/s
  is tasks over the time until every submit was answered; completed/s is tasks over the time until
  the last result was in a client's hands.
- closed loop: each client submits one task, awaits its result, and goes on: completed/s and the
  latency (submit -> result in hand) percentiles.
A diffbus client submits with POST /api/v1/upscale and learns of completion on one WebSocket
subscribed to all its tasks (GET /api/v1/ws) whose completed events carry the image ("images": true;
with --download it GETs the result URL instead); a Celery client calls delay() and
AsyncResult.get(), which returns the image. Every task must end completed with a 128×128 PNG:
any that does not is counted lost. Both systems stay up for the whole run; at each level they take
turns in rounds (a quarter of the tasks each, by default: diffbus burst, Celery burst, diffbus loop,
Celery loop, ...), so drift in the machine's speed hits both alike. Writes
bench/results/control_plane.json.
"""

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import aiohttp
from PIL import Image

from common import KEY, ROOT, demo_model, machine, percentile, running, write_result
from services.cli.embedded import free_port

HEADERS = {"X-API-Key": KEY}
SIZE, SCALE = 64, 2
OUT = SIZE * SCALE
TERMINAL = ("completed", "failed", "cancelled")
TIMEOUT_S = 120.0
WARMUP = 20


def input_png() -> bytes:
    image = Image.merge("RGB", [Image.linear_gradient("L").resize((SIZE, SIZE)),
                                Image.radial_gradient("L").resize((SIZE, SIZE)),
                                Image.linear_gradient("L").rotate(90).resize((SIZE, SIZE))])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def is_result(png: bytes) -> bool:
    with Image.open(io.BytesIO(png)) as img:
        return img.size == (OUT, OUT)


def shares(tasks: int, clients: int) -> list[int]:
    return [tasks // clients + (i < tasks % clients) for i in range(clients)]


def summary(tasks: int, t0: float, accepted_at: float | None, done_at: float, latencies: list[float],
            lost: int) -> dict:
    out = {"tasks": tasks, "lost": lost, "seconds": done_at - t0, "latencies": latencies}
    if accepted_at is not None:
        out["accept_seconds"] = accepted_at - t0
    return out


def merged(parts: list[dict]) -> dict:
    """One phase's rounds as one: rates over their summed times, latency percentiles over all tasks."""
    tasks, lost = sum(p["tasks"] for p in parts), sum(p["lost"] for p in parts)
    out = {"tasks": tasks, "lost": lost, "rounds": len(parts),
           "completed_per_s": (tasks - lost) / sum(p["seconds"] for p in parts)}
    if "accept_seconds" in parts[0]:
        out["accepted_per_s"] = tasks / sum(p["accept_seconds"] for p in parts)
    latencies = [t for p in parts for t in p["latencies"]]
    if latencies:
        out["latency_ms"] = {f"p{q}": 1000 * percentile(latencies, q) for q in (50, 95, 99)}
    return out


# --- diffbus: HTTP in, one WebSocket for every completion, HTTP download

class DiffbusClient:
    def __init__(self, session: aiohttp.ClientSession, base: str, body: dict, warmup: int = WARMUP,
                 inline: bool = True):
        self.session, self.base, self.body, self.warmup, self.inline = session, base, body, warmup, inline
        self.done: dict[str, tuple[str, dict]] = {}  # task id -> (terminal event, task view)
        self.waiting: dict[str, asyncio.Future] = {}
        self.ids: list[str] = []  # every task submitted

    async def __aenter__(self):
        self.ws = await self.session.ws_connect(f"{self.base}/api/v1/ws", headers=HEADERS, max_msg_size=0)
        await self.ws.send_json({"subscribe": "all", "previews": False, "images": self.inline})
        self.pump = asyncio.create_task(self._pump())
        # The server takes commands in order: once the probe's state arrives, "all" is live too.
        probe = await self.submit()
        await self.ws.send_json({"subscribe": [probe]})
        for task_id in [probe] + [await self.submit() for _ in range(self.warmup)]:
            if not await self.finish(task_id):
                raise RuntimeError(f"warm-up task {task_id} did not complete")
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()
        await self.pump

    async def _pump(self) -> None:
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = json.loads(frame.data)
            if msg.get("event") in TERMINAL:
                self.done[msg["task_id"]] = (msg["event"], msg["data"])
                future = self.waiting.pop(msg["task_id"], None)
                if future is not None and not future.done():
                    future.set_result(None)

    async def submit(self) -> str:
        async with self.session.post(f"{self.base}/api/v1/upscale", json=self.body, headers=HEADERS) as r:
            if r.status != 200:
                raise RuntimeError(f"submit answered {r.status}: {await r.text()}")
            task_id = (await r.json())["task_id"]
        self.ids.append(task_id)
        return task_id

    async def finish(self, task_id: str) -> bool:
        """Await the task's end and download its image: True when it completed with the right image."""
        if task_id not in self.done:
            future = self.waiting.setdefault(task_id, asyncio.get_running_loop().create_future())
            try:
                await asyncio.wait_for(future, TIMEOUT_S)
            except TimeoutError:
                return False
        event, view = self.done[task_id]
        if event != "completed":
            return False
        if self.inline:  # the image came with the event
            return is_result(base64.b64decode(view["images"][0]))
        async with self.session.get(view["result_url"]) as r:
            return r.status == 200 and is_result(await r.read())

    async def burst(self, tasks: int, clients: int) -> dict:
        t0, accepted, done, lost = time.perf_counter(), [], [], 0

        async def client(share: int) -> None:
            nonlocal lost
            ids = [await self.submit() for _ in range(share)]
            accepted.append(time.perf_counter())
            for task_id in ids:
                lost += not await self.finish(task_id)
                done.append(time.perf_counter())

        await asyncio.gather(*(client(n) for n in shares(tasks, clients)))
        return summary(tasks, t0, max(accepted), max(done), [], lost)

    async def closed_loop(self, tasks: int, clients: int) -> dict:
        t0, latencies, lost = time.perf_counter(), [], 0

        async def client(share: int) -> None:
            nonlocal lost
            for _ in range(share):
                t = time.perf_counter()
                lost += not await self.finish(await self.submit())
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(client(n) for n in shares(tasks, clients)))
        return summary(tasks, t0, None, time.perf_counter(), latencies, lost)

    async def never_completed(self) -> list[str]:
        """Every task submitted, as the API reports it now: the ids not completed."""
        bad, sem = [], asyncio.Semaphore(16)

        async def check(task_id: str) -> None:
            async with sem, self.session.get(f"{self.base}/api/v1/tasks/{task_id}", headers=HEADERS) as r:
                if r.status != 200 or (await r.json())["status"] != "completed":
                    bad.append(task_id)

        await asyncio.gather(*(check(t) for t in self.ids))
        return bad


def run_level(base: str, body: dict, celery: "CeleryClient | None", concurrency: int, tasks: int,
              rounds: int, inline: bool) -> dict:
    """Both systems at one concurrency, taking turns round by round (burst, then closed loop), so a
    change in the machine's speed during the level hits both alike."""
    loop = asyncio.new_event_loop()  # the diffbus client's: idle while Celery has its turn
    session = loop.run_until_complete(_session())
    client = loop.run_until_complete(DiffbusClient(session, base, body, min(WARMUP, tasks), inline).__aenter__())
    phases = {system: {"burst": [], "closed_loop": []} for system in ("diffbus", "celery")}
    try:
        for share in shares(tasks, rounds):
            phases["diffbus"]["burst"].append(loop.run_until_complete(client.burst(share, concurrency)))
            if celery is not None:
                phases["celery"]["burst"].append(celery.burst(share, concurrency))
            phases["diffbus"]["closed_loop"].append(loop.run_until_complete(client.closed_loop(share, concurrency)))
            if celery is not None:
                phases["celery"]["closed_loop"].append(celery.closed_loop(share, concurrency))
        never = loop.run_until_complete(client.never_completed())
    finally:
        loop.run_until_complete(client.__aexit__(None, None, None))
        loop.run_until_complete(session.close())
        loop.close()
    level = {"concurrency": concurrency,
             "diffbus": {phase: merged(parts) for phase, parts in phases["diffbus"].items()}}
    level["diffbus"].update(submitted=len(client.ids), never_completed=len(never))
    if celery is not None:
        level["celery"] = {phase: merged(parts) for phase, parts in phases["celery"].items()}
        level["ratio"] = ratios(level["diffbus"], level["celery"])
    return level


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


# --- Celery: delay() and AsyncResult.get() from client threads

@contextmanager
def celery_stack(tmp: Path):
    """redis-server on a free port in `tmp` (Debian's, default settings) and a Celery worker."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server not found: `make bench` installs it (apt-get install redis-server), "
                         "or run with --no-baseline")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_log = open(tmp / "redis.log", "wb")
    redis = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp)],
                             stdout=redis_log, stderr=subprocess.STDOUT)
    worker = None
    try:
        import redis as redis_client

        deadline = time.monotonic() + 10
        while True:
            try:
                redis_client.Redis(port=port).ping()
                break
            except redis_client.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        env = {**os.environ, "BENCH_REDIS_URL": url}
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
                                   "--loglevel", "WARNING"], cwd=ROOT, env=env,
                                  stdout=open(tmp / "celery.log", "wb"), stderr=subprocess.STDOUT)
        os.environ["BENCH_REDIS_URL"] = url  # read when the client imports the app
        from celery_app import upscale

        yield upscale
    finally:
        for proc in (worker, redis):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


class CeleryClient:
    def __init__(self, task, image_b64: str):
        self.task, self.args = task, (image_b64, OUT, OUT)
        self.submitted = 0
        self.lock = threading.Lock()
        for _ in range(WARMUP):
            self.task.delay(*self.args).get(timeout=TIMEOUT_S)

    def finish(self, result) -> bool:
        try:
            return is_result(base64.b64decode(result.get(timeout=TIMEOUT_S)))
        except Exception:  # noqa: BLE001 - a task that failed or never ended is lost
            return False

    def threads(self, target, tasks: int, clients: int) -> None:
        threads = [threading.Thread(target=target, args=(n,)) for n in shares(tasks, clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.submitted += tasks

    def burst(self, tasks: int, clients: int) -> dict:
        t0, accepted, done, lost = time.perf_counter(), [], [], [0]

        def client(share: int) -> None:
            results = [self.task.delay(*self.args) for _ in range(share)]
            accepted.append(time.perf_counter())
            for result in results:
                ok = self.finish(result)
                with self.lock:
                    lost[0] += not ok
                done.append(time.perf_counter())

        self.threads(client, tasks, clients)
        return summary(tasks, t0, max(accepted), max(done), [], lost[0])

    def closed_loop(self, tasks: int, clients: int) -> dict:
        t0, latencies, lost = time.perf_counter(), [], [0]

        def client(share: int) -> None:
            for _ in range(share):
                t = time.perf_counter()
                ok = self.finish(self.task.delay(*self.args))
                latencies.append(time.perf_counter() - t)
                with self.lock:
                    lost[0] += not ok

        self.threads(client, tasks, clients)
        return summary(tasks, t0, None, time.perf_counter(), latencies, lost[0])


# --- the run

RATIOS = (("accepted/s", "burst", "accepted_per_s"), ("burst done/s", "burst", "completed_per_s"),
          ("loop done/s", "closed_loop", "completed_per_s"))


def ratios(d: dict, c: dict) -> dict:
    out = {f"{phase}.{key}": d[phase][key] / c[phase][key] for _, phase, key in RATIOS}
    out.update({f"closed_loop.latency_ms.{q}": d["closed_loop"]["latency_ms"][q] / c["closed_loop"]["latency_ms"][q]
                for q in ("p50", "p95", "p99")})
    return out


def print_table(result: dict) -> None:
    print(f"\n{result['tasks']} tasks a phase in {result['rounds']} rounds; 64x64 PNG -> 128x128 Lanczos; "
          f"{result['machine']['cpus']} cores")
    cols = [name for name, _, _ in RATIOS] + ["p50 ms", "p95 ms", "p99 ms", "lost"]
    print(f"{'C':>3} {'':8}" + "".join(f"{c:>14}" for c in cols))
    for level in result["levels"]:
        for system in ("diffbus", "celery"):
            r = level.get(system)
            if r is None:
                continue
            lat = r["closed_loop"]["latency_ms"]
            values = [r[phase][key] for _, phase, key in RATIOS] + [lat["p50"], lat["p95"], lat["p99"]]
            lost = r["burst"]["lost"] + r["closed_loop"]["lost"] + r.get("never_completed", 0)
            print(f"{level['concurrency']:>3} {system:8}" + "".join(f"{v:14.1f}" for v in values) + f"{lost:14d}")
        if level.get("ratio"):
            ratio = level["ratio"]
            keys = [f"{phase}.{key}" for _, phase, key in RATIOS] + [
                f"closed_loop.latency_ms.{q}" for q in ("p50", "p95", "p99")]
            print(f"{'':>3} {'d/c':8}" + "".join(f"{ratio[k]:13.2f}x" for k in keys))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000, help="tasks in each phase at each concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--rounds", type=int, default=4, help="turns each system takes at each concurrency")
    ap.add_argument("--download", action="store_true",
                    help="diffbus clients GET each image rather than take it from the completed event")
    ap.add_argument("--no-baseline", action="store_true", help="diffbus only (no Redis, no Celery)")
    args = ap.parse_args()
    png = input_png()
    body = {"image": "data:image/png;base64," + base64.b64encode(png).decode(), "scale": SCALE,
            "upscaler": "Lanczos"}
    result = {"benchmark": "control_plane", "machine": machine(), "tasks": args.tasks, "rounds": args.rounds,
              "diffbus_images": "downloaded" if args.download else "in the completed event",
              "job": f"Lanczos upscale {SIZE}x{SIZE} PNG -> {OUT}x{OUT} PNG", "levels": []}
    with tempfile.TemporaryDirectory(prefix="diffbus-bench-") as d:
        tmp = Path(d)
        model = demo_model(tmp)
        with running(tmp / "stack", models=[{"name": "demo", "path": str(model)}]) as stack, \
                (celery_stack(tmp) if not args.no_baseline else _none()) as task:
            celery = None if task is None else CeleryClient(task, base64.b64encode(png).decode())
            for c in args.concurrency:
                print(f"concurrency {c}", flush=True)
                result["levels"].append(run_level(stack.base, body, celery, c, args.tasks, args.rounds,
                                                  not args.download))
    result["lost"] = {"diffbus": sum(lv["diffbus"]["burst"]["lost"] + lv["diffbus"]["closed_loop"]["lost"]
                                     + lv["diffbus"]["never_completed"] for lv in result["levels"])}
    if not args.no_baseline:
        result["lost"]["celery"] = sum(lv["celery"]["burst"]["lost"] + lv["celery"]["closed_loop"]["lost"]
                                       for lv in result["levels"])
    best_accepted = max(lv["diffbus"]["burst"]["accepted_per_s"] for lv in result["levels"])
    result["targets"] = {"accepted_per_s_at_least_1000": best_accepted >= 1000}
    if not args.no_baseline:
        result["targets"]["completed_per_s_at_least_celery"] = all(
            lv["ratio"][k] >= 1 for lv in result["levels"] for k in ("burst.completed_per_s",
                                                                     "closed_loop.completed_per_s"))
    print_table(result)
    print(f"targets: {result['targets']}")
    write_result("control_plane", result)


@contextmanager
def _none():
    yield None


if __name__ == "__main__":
    main()
