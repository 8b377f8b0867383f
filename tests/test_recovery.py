"""Faults an operator meets: the nats-server crashes and comes back under a running diffbus, a
notifier dies mid-delivery or after a receiver answered. Nothing is lost, doubled, or left broken."""

import asyncio
import time
import uuid

import aiohttp
import nats
import pytest

from schemas import subjects

from .conftest import Client, wait_ready
from .stack import Stack
from .test_resilience import count_events
from .test_webhooks import receiver, verified  # noqa: F401 - receiver is a fixture

DRILL_JOB = {"width": 256, "height": 256, "num_inference_steps": 6}


@pytest.fixture
def own_stack(tmp_path, demo_model):
    s = Stack(tmp_path, demo_model).start_all()
    try:
        wait_ready(s)
        yield s
    finally:
        s.close()


async def eventually(check, timeout: float, what: str):
    """Await `check()` until it returns something true (without blocking the loop the receiver runs on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_nats_server_crash_under_load_ends_every_task_and_webhook_once(own_stack, receiver):
    s = own_stack
    hooks = [f"drill-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    async with aiohttp.ClientSession() as session:
        client = Client(session, s.base_url)

        async def health() -> dict | None:
            try:
                async with session.get(f"{s.base_url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return await r.json()
            except (aiohttp.ClientError, TimeoutError):
                return None

        ids = [await client.submit({"prompt": f"drill {i}", "callback_url": receiver.url(hook), **DRILL_JOB})
               for i, hook in enumerate(hooks)]
        await client.wait(ids[0], timeout=60)  # the worker is busy with the rest
        s.nats.proc.kill()  # a crash, not a clean stop
        s.nats.proc.wait()
        s.nats.start()  # the same store dir: memory-storage streams and buckets are gone

        async def healthy():
            h = await health()
            return h if h and h["status"] == "ok" and h["model_loaded"] else None

        report = await eventually(healthy, 30, "/health to be ok again")
        assert report["dependencies"]["workers"]["by_kind"]["gpu"] >= 1
        for task_id in ids:
            assert (await client.wait(task_id, timeout=120))["status"] == "completed"
        for hook in hooks:
            await receiver.wait(hook)
        await asyncio.sleep(2)  # a second POST, if any, would come by now (retry schedule: 0.3 s)
        assert [len(receiver.to(hook)) for hook in hooks] == [1] * len(hooks)
        assert sorted(verified(receiver.to(hook)[0])["task_id"] for hook in hooks) == sorted(ids)

    nc = await nats.connect(s.nats_url)
    try:
        js = nc.jetstream()
        for task_id in ids:
            assert [await count_events(js, task_id, e) for e in ("completed", "failed", "cancelled")] == [1, 0, 0]
        await js.stream_info(subjects.PROGRESS)  # made again
    finally:
        await nc.close()
    assert all(p.poll() is None for p in s.procs), "a service had to restart:\n" + s.logs()
