"""What a projector restart costs with a long history: N finished tasks (accepted, started, completed)
written straight to the TASKS stream in the real event format, a projector started on them (it builds
its database), stopped, and started again: the time from each start until its database holds the
whole stream, and whether the restart rebuilt.

    .venv/bin/python bench/projector_restart.py [--tasks 100000]

Writes bench/results/projector_restart.json.
"""

import argparse
import asyncio
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import nats.errors
import yaml

from common import ROOT, machine, write_result
from schemas import subjects
from schemas.codec import decode, encode
from schemas.events import Accepted, Completed, ImageResult, Started, TaskStatus
from schemas.queries import TaskGet, TaskReply
from schemas.jobs import Txt2Img
from services import bus
from services.cli.embedded import EmbeddedNats, free_port
from services.config import load

EVENTS_PER_TASK = 3


def task_events(i: int, at: float) -> list:
    task_id = f"bench-{i:08d}"
    spec = Txt2Img(model="demo", prompt=f"prompt {i}", width=64, height=64, steps=2, guidance_scale=7.5, seed=i)
    return [
        Accepted(task_id=task_id, at=at, owner="bench", spec=spec),
        Started(task_id=task_id, at=at + 1, worker="gpu-bench-1"),
        Completed(task_id=task_id, at=at + 2, worker="gpu-bench-1", elapsed_s=1.0, images=[ImageResult(
            key=f"results/{task_id}/0.png", content_type="image/png", width=64, height=64, seed=i)]),
    ]


async def fill(config, tasks: int) -> int:
    """Publish every task's events (core publishes, flushed in chunks); the stream's last sequence."""
    nc = await nats.connect(config.nats.url)
    js = nc.jetstream()
    await bus.ensure(js, config)
    now = time.time() - 86400
    for i in range(tasks):
        for event in task_events(i, now):
            await nc.publish(subjects.task_event(event.task_id, event.name()), encode(event))
        if i % 2000 == 1999:
            await nc.flush()
            await _wait_stored(js, (i + 1) * EVENTS_PER_TASK)
    await nc.flush()
    last = await _wait_stored(js, tasks * EVENTS_PER_TASK)
    await nc.close()
    return last


async def _wait_stored(js, count: int) -> int:
    while True:
        state = (await js.stream_info(subjects.TASKS)).state
        if state.messages >= count:
            return state.last_seq
        await asyncio.sleep(0.05)


def applied(db_path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            return db.execute("SELECT seq FROM applied").fetchone()[0]
    except sqlite3.Error:
        return 0


async def answers(url: str, task_id: str) -> bool:
    """Whether a projector answers a query for `task_id` with the task completed."""
    nc = await nats.connect(url)
    try:
        reply = await nc.request(subjects.TASK_GET, encode(TaskGet(task_id=task_id)), timeout=5)
        task = decode(reply.data, TaskReply).task
        return task is not None and task.status is TaskStatus.COMPLETED
    except (nats.errors.Error, TimeoutError):
        return False
    finally:
        await nc.close()


def start_projector(config, config_path: Path, last_seq: int, log: Path) -> tuple[subprocess.Popen, float]:
    """Start a projector; (its process, seconds until its database held the whole stream and it
    answered a query for the last task)."""
    db_path, last_task = config.data_path / config.projector.db, task_events(last_seq // EVENTS_PER_TASK - 1, 0)[0]
    started = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "projector", "--config", str(config_path)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    while applied(db_path) < last_seq or not asyncio.run(answers(config.nats.url, last_task.task_id)):
        if proc.poll() is not None:
            raise SystemExit(f"projector exited with code {proc.returncode}; see {log}")
        time.sleep(0.02)
    return proc, time.perf_counter() - started


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    result = {"machine": machine(), "tasks": args.tasks, "events": args.tasks * EVENTS_PER_TASK}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config_path = tmp / "config.yaml"
        config_path.write_text(yaml.safe_dump({"data_dir": str(tmp / "data"),
                                               "nats": {"url": f"nats://127.0.0.1:{free_port()}"}}))
        config = load(config_path)
        log = tmp / "projector.log"
        with EmbeddedNats(config.nats.url, tmp / "nats"):
            began = time.perf_counter()
            last_seq = asyncio.run(fill(config, args.tasks))
            result["fill_s"] = round(time.perf_counter() - began, 2)
            proc, result["first_start_s"] = start_projector(config, config_path, last_seq, log)
            stop(proc)
            builds = log.read_text().count("building ")
            proc, result["restart_s"] = start_projector(config, config_path, last_seq, log)
            stop(proc)
            result["restart_rebuilt"] = log.read_text().count("building ") > builds
    print(f"{args.tasks} tasks ({result['events']} events): first start {result['first_start_s']:.2f} s, "
          f"restart {result['restart_s']:.2f} s (rebuilt: {result['restart_rebuilt']})")
    write_result("projector_restart", result)


if __name__ == "__main__":
    main()
