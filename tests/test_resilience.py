"""Workers die, projectors lose their database: tasks still end once, state is rebuilt from the stream."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys

import aiohttp
import nats
import pytest

from schemas import subjects
from schemas.codec import decode_event

from .conftest import Client, wait_ready
from .stack import Stack, wait_until


@pytest.fixture
def two_worker_stack(tmp_path, demo_model, request):
    s = Stack(tmp_path, demo_model, **getattr(request, "param", {})).start_all(workers=2)
    try:
        wait_ready(s)
        # Both workers announced: one alone could take the job and be the one killed.
        wait_until(lambda: len(list(tmp_path.glob("gpu-worker-*.log"))) == 2 and all(
            b"ready" in p.read_bytes() for p in tmp_path.glob("gpu-worker-*.log")), 90, "two workers", s)
        yield s
    finally:
        s.close()


async def count_events(js, task_id: str, event: str) -> int:
    info = await js.stream_info(subjects.TASKS, subjects_filter=subjects.task_event(task_id, event))
    return (info.state.subjects or {}).get(subjects.task_event(task_id, event), 0)


SLOW_JOB = {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 60, "num_images": 2}


async def kill_worker_when_started(client: Client, started):
    """Submit a slow job and SIGKILL the worker that starts it: (task id, its started event)."""
    task_id = await client.submit(SLOW_JOB)
    first = decode_event((await started.next_msg(timeout=30)).data)
    assert first.task_id == task_id
    os.kill(int(first.worker.rsplit("-", 1)[1]), signal.SIGKILL)
    return task_id, first


@contextlib.asynccontextmanager
async def watching_starts(stack: Stack):
    """A client, a NATS connection, and a subscription to every task's `started` events."""
    nc = await nats.connect(stack.nats_url)
    try:
        started = await nc.subscribe(subjects.task_event("*", "started"))
        async with aiohttp.ClientSession() as session:
            yield Client(session, stack.base_url), nc, started
    finally:
        await nc.close()


async def test_worker_killed_mid_job_task_completes_once(two_worker_stack):
    async with watching_starts(two_worker_stack) as (client, nc, started):
        js = nc.jetstream()
        task_id, first = await kill_worker_when_started(client, started)
        task = await client.wait(task_id, timeout=120)
        assert task["status"] == "completed", task
        assert len(task["result_urls"]) == 2
        second = decode_event((await started.next_msg(timeout=5)).data)
        assert second.task_id == task_id and second.worker != first.worker and second.attempt == 2
        assert await count_events(js, task_id, "completed") == 1
        assert await count_events(js, task_id, "started") == 2
        objects = [o.name for o in await (await js.object_store(subjects.IMAGES_BUCKET)).list()]
        keys = [url.split("/files/", 1)[1] for url in task["result_urls"]]
        prefix = keys[0].rsplit("/", 1)[0] + "/"  # one random prefix per attempt: no task id in it
        assert sorted(o for o in objects if o.startswith(prefix)) == [prefix + "0.png", prefix + "1.png"] == keys


@pytest.mark.parametrize("two_worker_stack", [{"worker": {"max_deliver": 1}}], indirect=True)
async def test_job_whose_attempts_all_died_ends_failed_with_the_reason(two_worker_stack):
    async with watching_starts(two_worker_stack) as (client, nc, started):
        task_id, _ = await kill_worker_when_started(client, started)
        task = await client.wait(task_id, timeout=60)
        assert task["status"] == "failed"
        assert "1 attempt(s)" in task["error_message"]
        assert (await nc.jetstream().stream_info(subjects.JOBS)).state.messages == 0


def table_rows(db_path) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        try:
            return db.execute("SELECT * FROM tasks ORDER BY task_id").fetchall()
        except sqlite3.OperationalError:  # a new database whose table is not made yet
            return []


async def test_projector_rebuilt_from_the_stream_has_the_same_rows(stack, client):
    ids = [await client.submit({"prompt": f"p{i}", "num_inference_steps": 2}) for i in range(3)]
    for task_id in ids:
        await client.wait(task_id)
    projector = next(p for p in stack.procs if p.args[3] == "projector" and p.poll() is None)
    assert Stack.stop(projector) == 0
    db_path = stack.root / "data" / "tasks.db"
    before = table_rows(db_path)
    assert {row[0] for row in before} >= set(ids)

    db_path.unlink()
    stack.start("projector", "--rebuild")
    wait_until(lambda: db_path.exists() and len(table_rows(db_path)) == len(before), 30,
               "the rebuilt database", stack)
    assert table_rows(db_path) == before
    # The API answers from the rebuilt projection.
    assert (await (await client.task(ids[0])).json())["status"] == "completed"

    # A database written by another projection version is rebuilt without being asked.
    assert Stack.stop(stack.procs[-1]) == 0
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE tasks SET status = 'stale'")
        db.execute("PRAGMA user_version = 1")
    stack.start("projector")
    wait_until(lambda: table_rows(db_path) == before, 30, "the rebuilt database", stack)

    # Commits are not fsynced: a power cut can undo the last ones after their events were acked.
    # The database then holds less than the consumer's ack floor says, and is rebuilt.
    assert Stack.stop(stack.procs[-1]) == 0
    with sqlite3.connect(db_path) as db:
        db.execute("DELETE FROM tasks WHERE task_id = ?", [ids[-1]])
        db.execute("UPDATE applied SET seq = seq - 3")
    stack.start("projector")
    wait_until(lambda: table_rows(db_path) == before, 30, "the database rebuilt after a lost tail", stack)


async def test_projector_restart_resumes_from_its_consumer_without_rebuilding(stack, client):
    before = await client.submit({"prompt": "before", "num_inference_steps": 2})
    await client.wait(before)
    projector = next(p for p in stack.procs if p.args[3] == "projector" and p.poll() is None)
    assert Stack.stop(projector) == 0
    db_path = stack.root / "data" / "tasks.db"
    inode, rows = db_path.stat().st_ino, table_rows(db_path)
    restarted = stack.start("projector")
    wait_until(lambda: b"projector ready" in restarted.log_path.read_bytes(), 30, "the projector", stack)
    after = await client.submit({"prompt": "after", "num_inference_steps": 2})
    assert (await client.wait(after))["status"] == "completed"
    assert (await (await client.task(before)).json())["status"] == "completed"
    assert db_path.stat().st_ino == inode  # the same database, not one built anew
    assert b"building" not in restarted.log_path.read_bytes()
    assert {row[0] for row in rows} <= {row[0] for row in table_rows(db_path)}


def test_demo_model_command_builds_a_loadable_folder(tmp_path):
    out = subprocess.run([sys.executable, "-m", "services.cli", "demo-model", str(tmp_path / "demo")],
                         capture_output=True, text=True, check=True)
    assert (tmp_path / "demo" / "model_index.json").exists()
    assert out.stdout.strip() == str(tmp_path / "demo")
