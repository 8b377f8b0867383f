"""A fleet on a 3-node NATS cluster (JetStream replicas 3): losing the node the API is connected to
(kill -9, mid-way through 20 submissions) loses no task and runs none twice."""

import asyncio
import time

import aiohttp
import nats
import pytest

from schemas import subjects
from schemas.codec import decode_event

from .cluster import NatsCluster
from .conftest import ALICE, wait_ready
from .stack import Stack, wait_until

TASKS = 20
JOB = {"prompt": "a lighthouse", "num_inference_steps": 2, "width": 64, "height": 64}
DEADLINE_S = 120


@pytest.fixture
def cluster(tmp_path):
    c = NatsCluster(tmp_path / "cluster").start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def fleet(tmp_path, demo_model, cluster):
    s = Stack(tmp_path, demo_model, nats={"url": cluster.urls[0], "servers": cluster.urls, "replicas": 3})
    try:
        for service in ("projector", "notifier", "gpu-worker", "api"):
            s.start(service)
        wait_ready(s)
        yield s
    finally:
        s.close()


async def submit(session: aiohttp.ClientSession, base_url: str, n: int) -> str:
    """Submit task n, retrying (same Idempotency-Key, so never two tasks) while the API's NATS fails over."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            async with session.post(f"{base_url}/api/v1/generate", json={**JOB, "seed": n},
                                    headers={"X-API-Key": ALICE, "Idempotency-Key": f"cluster-{n}"}) as resp:
                if resp.status == 200:
                    return (await resp.json())["task_id"]
                error = f"HTTP {resp.status}: {await resp.text()}"
        except aiohttp.ClientError as e:
            error = repr(e)
        assert time.monotonic() < deadline, f"task {n} not accepted: {error}"
        await asyncio.sleep(0.2)


async def status(session: aiohttp.ClientSession, base_url: str, task_id: str) -> str | None:
    try:
        async with session.get(f"{base_url}/api/v1/tasks/{task_id}", headers={"X-API-Key": ALICE}) as resp:
            return (await resp.json())["status"] if resp.status == 200 else None
    except aiohttp.ClientError:
        return None


async def test_losing_the_api_nats_node_loses_no_task_and_runs_none_twice(fleet, cluster):
    api_node = wait_until(lambda: cluster.node_of("api"), 10, "the API's connection", fleet)
    async with aiohttp.ClientSession() as session:
        ids = [await submit(session, fleet.base_url, n) for n in range(TASKS // 2)]
        api_node.kill()  # kill -9: no goodbye to its clients or its peers
        killed_at = time.monotonic()
        killed_at_wall = time.time()
        ids += [await submit(session, fleet.base_url, n) for n in range(TASKS // 2, TASKS)]
        accepted_s = time.monotonic() - killed_at
        pending = set(ids)
        while pending:
            assert time.monotonic() - killed_at < DEADLINE_S, f"unfinished: {pending}\n{fleet.logs()}"
            for task_id in list(pending):
                state = await status(session, fleet.base_url, task_id)
                assert state in (None, "pending", "processing", "completed"), (task_id, state, fleet.logs())
                if state == "completed":
                    pending.discard(task_id)
            await asyncio.sleep(0.2)
        done_s = time.monotonic() - killed_at
    assert len(set(ids)) == TASKS
    assert cluster.node_of("api") not in (None, api_node)  # the API moved to a surviving node

    nc = await nats.connect([n.url for n in cluster.nodes if n is not api_node])
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.TASKS, subjects_filter=subjects.task_event("*", "completed"))
        completed = info.state.subjects or {}
        assert {subjects.task_event(t, "completed"): 1 for t in ids} == completed
        assert info.config.num_replicas == 3
        failed = await js.stream_info(subjects.TASKS, subjects_filter=subjects.task_event("*", "failed"))
        assert not failed.state.subjects
        last_completed = max([decode_event((await js.get_last_msg(subjects.TASKS, subject)).data).at
                              for subject in completed]) - killed_at_wall
    finally:
        await nc.close()
    assert not fleet.crashed(), fleet.logs()
    print(f"\nnode {api_node.name} killed: the remaining {TASKS // 2} tasks accepted in {accepted_s:.1f}s, "
          f"the last completed {last_completed:.1f}s after the kill, and the API reported all {TASKS} "
          f"completed after {done_s:.1f}s")
