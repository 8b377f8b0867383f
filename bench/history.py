"""Months of history: the projector and the history pages over a million tasks.

    .venv/bin/python bench/history.py [--tasks 1000000] [--catch-up 60000] [--queries 200] | --tiny

Fills a nats-server's TASKS stream with `--tasks` tasks' events (accepted, started, then completed or
failed: the real event Structs, encoded as the services encode them), written straight to the stream,
not through generation; created times spread over 30 days. Half the tasks belong to one key (a busy
product or bot), the rest to 99 others. Then, with the real projector and API as processes:

- rebuild: the projector builds its database from the whole stream (events/s, wall time);
- catch-up: the projector stops, `--catch-up` more tasks arrive (default: 10 minutes of 100 workers
  finishing one task a second each), it starts again and applies them (events/s, wall time);
- pages: native `GET /api/v1/tasks` and FooocusAPI `GET /tasks`, with and without filters (status,
  time range), for the busy key and a small one; one task's `GET /api/v1/tasks/{id}`: p50/p99 ms;
- sizes: the database and the stream, bytes per task.
"""

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import nats
import nats.errors
import nats.js.errors
import yaml

from common import machine, percentile, write_result  # noqa: I001 - bench/ is on sys.path when run

from schemas import subjects
from schemas.codec import encode
from schemas.events import Accepted, Completed, Failed, ImageResult, Started
from schemas.jobs import Txt2Img
from services import bus, storage
from services.cli.embedded import EmbeddedNats, free_port, terminate
from services.config import load

DAYS = 30
CHUNK = 2000  # events published without waiting; the last of each chunk is acknowledged
BUSY, SMALL = "busy", "key-1"


def key_of(owner: str) -> str:
    return f"bench-{owner}-0123456789"


def owners(count: int) -> list[str]:
    return [BUSY] + [f"key-{i}" for i in range(1, count)]


def events_of(task_id: str, owner: str, at: float, number: int) -> list:
    """One task's events as the api and a worker publish them: accepted, started, then the end."""
    spec = Txt2Img(model="demo", prompt=f"a lighthouse at dusk, number {number}", negative_prompt="blurry",
                   width=512, height=512, steps=20, guidance_scale=7.5, seed=number,
                   scheduler="DPMSolverMultistepScheduler")
    request = {"prompt": spec.prompt, "negative_prompt": "blurry", "width": 512, "height": 512, "seed": number}
    accepted = Accepted(task_id=task_id, at=at, owner=owner, spec=spec, priority=subjects.Priority.NORMAL,
                        dialect="native", request=request)
    started = Started(task_id=task_id, at=at + 0.5, worker="gpu-bench-1", attempt=1)
    if number % 20 == 0:
        end = Failed(task_id=task_id, at=at + 3.0, error="CUDA out of memory", worker="gpu-bench-1")
    else:
        end = Completed(task_id=task_id, at=at + 3.0, worker="gpu-bench-1", elapsed_s=2.4, images=[ImageResult(
            key=storage.result_key(task_id, 0, "png"), content_type="image/png", width=512, height=512, seed=number)])
    return [accepted, started, end]


async def fill(js, nc, tasks: int, start: float, end: float, first: int, who: list[str]) -> dict[str, list[str]]:
    """Publish `tasks` tasks made between `start` and `end`; owner -> its task ids (a sample)."""
    ids: dict[str, list[str]] = {o: [] for o in who}
    pending = 0
    for i in range(tasks):
        owner = BUSY if i % 2 == 0 else who[1 + (i // 2) % (len(who) - 1)]
        task_id = str(uuid.uuid4())
        if len(ids[owner]) < 1000:
            ids[owner].append(task_id)
        for event in events_of(task_id, owner, start + (end - start) * i / tasks, first + i):
            pending += 1
            subject = subjects.task_event(task_id, event.name())
            if pending % CHUNK:
                await nc.publish(subject, encode(event))
            else:  # flow control: the stream has stored everything before this one
                await js.publish(subject, encode(event))
    await nc.flush()
    return ids


def config_file(root: Path, nats_url: str, who: list[str]) -> tuple[Path, int]:
    port = free_port()
    config = {"data_dir": str(root / "data"), "nats": {"url": nats_url},
              "api": {"port": port, "keys": [{"key": key_of(o), "id": o} for o in who]},
              "retention": {"days": DAYS + 1}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


STARTED: list[subprocess.Popen] = []


def start(service: str, config: Path, log: Path) -> subprocess.Popen:
    STARTED.append(subprocess.Popen([sys.executable, "-m", "services.cli", service, "--config", str(config)],
                                    stdout=open(log, "ab"), stderr=subprocess.STDOUT))
    return STARTED[-1]


async def applied_all(js, since: float) -> tuple[float, float]:
    """Wait until the projector has acknowledged every event the stream holds: (seconds since `since`,
    seconds since its first acknowledgement, i.e. without the process's start)."""
    last = (await js.stream_info(subjects.TASKS)).state.last_seq
    floor, first_ack = None, None
    while True:
        try:
            info = await js.consumer_info(subjects.TASKS, subjects.PROJECTOR_DURABLE)
            if floor is None:
                floor = info.ack_floor.stream_seq
            if first_ack is None and info.ack_floor.stream_seq > floor:
                first_ack = time.monotonic()
            if info.ack_floor.stream_seq >= last:
                now = time.monotonic()
                return now - since, now - (first_ack or since)
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):  # not made yet; a busy server
            pass
        await asyncio.sleep(0.02)


async def timed_gets(session, url: str, paths: list[str], key: str) -> dict:
    """p50/p99 of the answers that came back 200, and how many did not (the projector's query timeout
    answers 503)."""
    took, failed = [], 0
    for path in paths:
        t = time.perf_counter()
        async with session.get(url + path, headers={"X-API-Key": key}) as r:
            await r.read()
            if r.status != 200:
                failed += 1
                continue
        took.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(percentile(took, 50), 2), "p99_ms": round(percentile(took, 99), 2), "n": len(took),
            "failed": failed}


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def pages(url: str, ids: dict[str, list[str]], span: tuple[float, float], queries: int) -> dict:
    rng = random.Random(7)
    lo, hi = span
    week = (hi - 7 * 86400, hi - 6 * 86400)  # one day, a week ago
    out = {}
    async with aiohttp.ClientSession() as session:
        await timed_gets(session, url, ["/api/v1/tasks"] * 3, key_of(BUSY))  # warm
        for owner in (BUSY, SMALL):
            key = key_of(owner)
            pick = [rng.randint(1, 50) for _ in range(queries)]
            out[owner] = {
                "native": await timed_gets(session, url, [f"/api/v1/tasks?page={p}&page_size=20" for p in pick], key),
                "native_filtered": await timed_gets(session, url, [
                    f"/api/v1/tasks?status=failed&start_at={iso(week[0])}&end_at={iso(week[1])}&page=1"] * queries,
                    key),
                "fooocus": await timed_gets(session, url, [f"/tasks?page={p - 1}&page_size=20" for p in pick], key),
                "fooocus_filtered": await timed_gets(session, url, [
                    f"/tasks?query=history&start_at={iso(week[0])}&end_at={iso(week[1])}"] * queries, key),
                "one_task": await timed_gets(session, url, [
                    f"/api/v1/tasks/{rng.choice(ids[owner])}" for _ in range(queries)], key),
            }
    return out


def db_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "data").glob("tasks.db*"))


async def measure(root: Path, args) -> dict:
    try:
        return await _measure(root, args)
    finally:
        for proc in STARTED:
            terminate(proc)


async def _measure(root: Path, args) -> dict:
    with EmbeddedNats(f"nats://127.0.0.1:{free_port()}", root / "nats") as server:
        who = owners(args.owners)
        config_path, port = config_file(root, server.url, who)
        config = load(config_path)
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await bus.ensure(js, config)
        now = time.time()
        t = time.monotonic()
        ids = await fill(js, nc, args.tasks, now - DAYS * 86400, now - 600, 1, who)
        filled_s = time.monotonic() - t
        events = (await js.stream_info(subjects.TASKS)).state.messages
        print(f"filled {args.tasks} tasks ({events} events) in {filled_s:.0f}s", flush=True)

        t = time.monotonic()
        projector = start("projector", config_path, root / "projector.log")
        rebuild_s, rebuild_apply_s = await applied_all(js, t)
        print(f"rebuilt in {rebuild_s:.1f}s", flush=True)
        terminate(projector)

        await fill(js, nc, args.catch_up, now - 600, now, args.tasks + 1, who)
        t = time.monotonic()
        projector = start("projector", config_path, root / "projector.log")
        catch_up_s, catch_up_apply_s = await applied_all(js, t)
        print(f"caught up in {catch_up_s:.1f}s", flush=True)

        api = start("api", config_path, root / "api.log")
        try:
            await wait_http(f"http://127.0.0.1:{port}/ping")
            history = await pages(f"http://127.0.0.1:{port}", ids, (now - DAYS * 86400, now), args.queries)
            stream = (await js.stream_info(subjects.TASKS)).state
        finally:
            terminate(api)
            terminate(projector)
            await nc.close()
        total = args.tasks + args.catch_up
        return {
            "tasks": args.tasks, "events": events, "owners": args.owners, "busy_key_share": 0.5,
            "fill_s": round(filled_s, 1),
            "rebuild": {"wall_s": round(rebuild_s, 2), "events_per_s": round(events / rebuild_s),
                        "applying_s": round(rebuild_apply_s, 2)},
            "catch_up": {"tasks": args.catch_up, "events": 3 * args.catch_up, "wall_s": round(catch_up_s, 2),
                         "events_per_s": round(3 * args.catch_up / catch_up_s), "applying_s": round(catch_up_apply_s, 2)},
            "pages": history,
            "sizes": {"db_bytes_per_task": round(db_bytes(root) / total), "stream_bytes_per_task":
                      round(stream.bytes / total), "stream_bytes_per_event": round(stream.bytes / stream.messages)},
            "targets": {"rebuild_events_per_s": 20_000, "page_p99_ms": 50},
            "machine": machine(),
        }


async def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer")
            await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--owners", type=int, default=100)
    parser.add_argument("--catch-up", type=int, default=60_000, help="tasks made while the projector is down")
    parser.add_argument("--queries", type=int, default=200, help="requests per kind of page")
    parser.add_argument("--tiny", action="store_true", help="2,000 tasks, for the smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.tasks, args.owners, args.catch_up, args.queries = 2000, 4, 300, 10
    with tempfile.TemporaryDirectory(prefix="diffbus-history-") as tmp:
        result = asyncio.run(measure(Path(tmp), args))
    print_table(result)
    write_result("history-tiny" if args.tiny else "history", result)


def print_table(r: dict) -> None:
    print(f"\n{r['tasks']:,} tasks, {r['events']:,} events")
    print(f"rebuild   {r['rebuild']['wall_s']:>8.1f} s  {r['rebuild']['events_per_s']:>9,} events/s  (target ≥ 20,000; "
          f"{r['rebuild']['applying_s']:.1f} s after the process had started)")
    print(f"catch-up  {r['catch_up']['wall_s']:>8.1f} s  {r['catch_up']['events_per_s']:>9,} events/s "
          f"({r['catch_up']['tasks']:,} tasks)")
    for owner, kinds in r["pages"].items():
        for kind, q in kinds.items():
            print(f"{owner:>6} {kind:<17} p50 {q['p50_ms']:>7.1f} ms  p99 {q['p99_ms']:>7.1f} ms  failed {q['failed']}")
    print(f"db {r['sizes']['db_bytes_per_task']} B/task, stream {r['sizes']['stream_bytes_per_task']} B/task")


if __name__ == "__main__":
    main()
