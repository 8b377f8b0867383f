"""Faults an operator meets: the nats-server crashes and comes back under a running diffbus, a
notifier dies mid-delivery or after a receiver answered. Nothing is lost, doubled, or left broken."""

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import nats
import pytest

from schemas import subjects
from schemas.codec import encode
from schemas.events import WebhookDelivered, WebhookEvent

from .conftest import Client, wait_ready
from .stack import Stack
from .test_resilience import count_events
from .test_webhooks import FAST, receiver, verified  # noqa: F401 - receiver is a fixture

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


async def test_webhook_recorded_as_delivered_is_not_posted_again(client, receiver, stack, js):
    """What a notifier killed right after a 2xx leaves: the delivery recorded, the event not acked.
    The next notifier gets the event again and must not POST it a second time."""
    hook = "once-" + uuid.uuid4().hex[:6]
    notifier = next(p for p in stack.procs if p.args[3] == "notifier" and p.poll() is None)
    Stack.stop(notifier, signal.SIGKILL)
    try:
        task_id = await client.submit({"prompt": "x", "callback_url": receiver.url(hook), **FAST})
        assert (await client.wait(task_id))["status"] == "completed"
        await js.publish(subjects.task_event(task_id, WebhookDelivered.name()), encode(WebhookDelivered(
            task_id=task_id, at=time.time(), about=WebhookEvent.COMPLETED, webhook_id=f"msg_{task_id}_completed",
            attempts=1)))
    finally:
        stack.start("notifier")

    async def all_acked():
        info = await js.consumer_info(subjects.TASKS, subjects.NOTIFIER_DURABLE)
        return info.num_pending == 0 and info.num_ack_pending == 0
    await eventually(all_acked, 30, "the new notifier to settle the completed event")
    assert receiver.to(hook) == []


def notifier_holding(stack: Stack, port: int) -> int:
    """The pid of the notifier whose TCP connection has local port `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for p in stack.procs:
        if p.args[3] == "notifier" and p.poll() is None:
            fds = f"/proc/{p.pid}/fd"
            if any(os.readlink(f"{fds}/{fd}") in inodes for fd in os.listdir(fds)):
                return p.pid
    raise AssertionError(f"no notifier holds port {port}")


async def test_notifier_killed_mid_delivery_is_retried_by_the_schedule_not_the_ack_wait(client, receiver, stack):
    """Two notifiers; the one posting is killed while the receiver hangs (before its 1 s timeout). The
    other sends the webhook after about the retry schedule's step (1 s at least), not after the former
    ack wait (2 * timeout + 10 s)."""
    hook = "midway-" + uuid.uuid4().hex[:6]
    receiver.slow_first.add(hook)
    second = stack.start("notifier")
    try:
        await asyncio.sleep(3)  # let it subscribe
        await client.submit({"prompt": "x", "callback_url": receiver.url(hook), **FAST})
        [first] = await receiver.wait(hook)
        os.kill(notifier_holding(stack, first["peer_port"]), signal.SIGKILL)
        killed_at = time.monotonic()
        calls = await receiver.wait(hook, 2, timeout=30)
        assert calls[1]["at"] - killed_at < 8
        assert calls[1]["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    finally:
        notifiers = [p for p in stack.procs if p.args[3] == "notifier"]
        for p in notifiers:
            if p.poll() is not None:
                p.stopped_on_purpose = True  # the one killed
        if second.poll() is None and sum(p.poll() is None for p in notifiers) > 1:
            Stack.stop(second)
