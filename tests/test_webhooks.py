"""Webhooks as a receiver sees them: signed, in the dialect's shape, once, retried when it fails."""

import asyncio
import signal
import time
import uuid

import nats
import pytest
from aiohttp import web
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from standardwebhooks.webhooks import Webhook

from schemas import subjects
from schemas.codec import encode
from schemas.events import Accepted
from schemas.jobs import Img2Img, Job, Txt2Img
from services.cli.embedded import free_port
from services.config import ApiKey

from .stack import ALICE, WEBHOOK_SECRET, Stack

FAST = {"num_inference_steps": 2}


class Receiver:
    """A real HTTP server on loopback that records every webhook; each path behaves its own way."""

    def __init__(self):
        self.port = free_port()
        self.calls: list[dict] = []
        self.fail_first: dict[str, int] = {}  # path -> how many first calls answer 503
        self.slow_first: set[str] = set()  # paths whose first call hangs for 2.5 s

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        seen = [c for c in self.calls if c["path"] == path]
        self.calls.append({"path": path, "headers": dict(request.headers), "body": await request.read(),
                           "at": time.monotonic(), "peer_port": request.transport.get_extra_info("peername")[1]})
        if path == "gone":
            return web.Response(status=410)
        if path in self.slow_first and not seen:
            await asyncio.sleep(2.5)
        if len(seen) < self.fail_first.get(path, 0):
            return web.Response(status=503)
        return web.Response(text="ok")

    def to(self, path: str) -> list[dict]:
        return [c for c in self.calls if c["path"] == path]

    async def wait(self, path: str, count: int = 1, timeout: float = 30) -> list[dict]:
        for _ in range(int(timeout / 0.05)):
            if len(self.to(path)) >= count:
                return self.to(path)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} webhook(s) to /{path} never arrived; got {len(self.to(path))}")


@pytest.fixture
async def receiver():
    r = Receiver()
    app = web.Application()
    app.router.add_post("/{path}", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", r.port).start()
    try:
        yield r
    finally:
        await runner.cleanup()


def verified(call: dict) -> dict:
    """The body, after checking the Standard Webhooks signature."""
    return Webhook(WEBHOOK_SECRET).verify(call["body"], call["headers"])


async def webhook_state(client, task_id: str, status: str) -> dict:
    for _ in range(100):
        task = await (await client.task(task_id)).json()
        if task.get("webhook", {}).get("status") == status:
            return task["webhook"]
        await asyncio.sleep(0.05)
    raise AssertionError(f"webhook of {task_id} never {status}: {task.get('webhook')}")


async def test_one_signed_delivery_in_the_seed_shape(client, receiver):
    hook = "one-" + uuid.uuid4().hex[:6]
    task_id = await client.submit({"prompt": "x", "callback_url": receiver.url(hook), **FAST})
    task = await client.wait(task_id)
    [call] = await receiver.wait(hook)
    assert verified(call) == {"task_id": task_id, "event": "completed", "status": "completed",
                              "image_url": task["result_url"]}
    assert call["headers"]["webhook-id"] == f"msg_{task_id}_completed"
    assert (await webhook_state(client, task_id, "delivered"))["attempts"] == 1
    await asyncio.sleep(1)
    assert len(receiver.to(hook)) == 1


async def test_several_images_come_as_image_urls_and_chosen_events_too(client, receiver):
    hook = "many-" + uuid.uuid4().hex[:6]
    task_id = await client.submit({"prompt": "x", "num_images": 2, "callback_url": receiver.url(hook),
                                   "webhook_events": ["started", "completed"], **FAST})
    task = await client.wait(task_id)
    calls = await receiver.wait(hook, 2)
    bodies = {verified(c)["event"]: verified(c) for c in calls}
    assert bodies["started"] == {"task_id": task_id, "event": "started", "status": "processing"}
    assert bodies["completed"]["image_urls"] == task["result_urls"]
    assert "image_url" not in bodies["completed"]


async def test_failed_task_sends_its_error_message(client, receiver, stack):
    """A job whose input image vanished from storage fails; its webhook says why."""
    hook = "failed-" + uuid.uuid4().hex[:6]
    task_id = str(uuid.uuid4())
    spec = Img2Img(model="demo", prompt="x", width=64, height=64, steps=2, guidance_scale=7, seed=1,
                   init_image="inputs/vanished.png", strength=0.5)
    await publish_task(stack, task_id, spec, receiver.url(hook))
    [call] = await receiver.wait(hook)
    body = verified(call)
    assert body["status"] == "failed" and "missing" in body["error_message"]
    assert (await client.wait(task_id))["error_message"] == body["error_message"]


async def publish_task(stack: Stack, task_id: str, spec, callback_url: str, dialect: str = "native") -> None:
    """What a dialect's handler publishes for a task: its accepted event, then its job."""
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        await js.publish(subjects.task_event(task_id, "accepted"), encode(Accepted(
            task_id=task_id, at=time.time(), owner=ApiKey(key=ALICE).owner, spec=spec, dialect=dialect, callback_url=callback_url)))
        await js.publish(subjects.generate_job(subjects.Priority.NORMAL, "demo"),
                         encode(Job(task_id=task_id, spec=spec)))
    finally:
        await nc.close()


async def test_fooocus_dialect_gets_its_task_object(receiver, stack):
    hook = "fooocus-" + uuid.uuid4().hex[:6]
    task_id = uuid.uuid4().hex
    spec = Txt2Img(model="demo", prompt="x", width=64, height=64, steps=2, guidance_scale=7, seed=1)
    await publish_task(stack, task_id, spec, receiver.url(hook), dialect="fooocus")
    body = verified((await receiver.wait(hook))[0])
    assert body["task_id"] == task_id and body["task_status"] == "finished" and body["progress"] == 100
    assert body["id"] > 0  # the task's number, as GET /tasks/{id} shows it
    assert body["webhook_url"] == receiver.url(hook)
    assert len(body["result"]) == 1 and "/files/results/" in body["result"][0] and task_id not in body["result"][0]
    assert body["in_queue_mills"] <= body["start_mills"] <= body["finish_mills"]


async def test_503_twice_then_200_is_three_attempts_with_one_webhook_id(client, receiver):
    hook = "flaky-" + uuid.uuid4().hex[:6]
    receiver.fail_first[hook] = 2
    task_id = await client.submit({"prompt": "x", "callback_url": receiver.url(hook), **FAST})
    calls = await receiver.wait(hook, 3)
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1
    assert all(verified(c)["status"] == "completed" for c in calls)
    state = await webhook_state(client, task_id, "delivered")
    assert state["attempts"] == 3 and state["last_status_code"] == 200
    await asyncio.sleep(1)
    assert len(receiver.to(hook)) == 3


async def test_410_stops_retries(client, receiver):
    task_id = await client.submit({"prompt": "x", "callback_url": receiver.url("gone"), **FAST})
    state = await webhook_state(client, task_id, "failed")
    assert state["attempts"] == 1 and state["last_status_code"] == 410
    await asyncio.sleep(1)
    assert len([c for c in receiver.to("gone") if verified(c)["task_id"] == task_id]) == 1


async def test_slow_receiver_is_retried_and_does_not_hold_up_others(client, receiver):
    slow, quick = "slow-" + uuid.uuid4().hex[:6], "quick-" + uuid.uuid4().hex[:6]
    receiver.slow_first.add(slow)
    slow_task = await client.submit({"prompt": "x", "callback_url": receiver.url(slow), **FAST})
    await receiver.wait(slow)  # its first delivery is hanging now
    quick_task = await client.submit({"prompt": "x", "callback_url": receiver.url(quick), **FAST})
    [quick_call] = await receiver.wait(quick)
    first_slow = receiver.to(slow)[0]
    assert quick_call["at"] - first_slow["at"] < 2.5  # delivered while the slow one still hung
    await receiver.wait(slow, 2)
    assert (await webhook_state(client, slow_task, "delivered"))["attempts"] == 2
    assert (await webhook_state(client, quick_task, "delivered"))["attempts"] == 1


async def test_notifier_killed_before_delivery_delivers_once_after_restart(client, receiver, stack):
    hook = "restart-" + uuid.uuid4().hex[:6]
    notifier = next(p for p in stack.procs if p.args[3] == "notifier" and p.poll() is None)
    Stack.stop(notifier, signal.SIGKILL)
    try:
        task_id = await client.submit({"prompt": "x", "callback_url": receiver.url(hook), **FAST})
        assert (await client.wait(task_id))["status"] == "completed"
        await asyncio.sleep(0.5)
        assert receiver.to(hook) == []
    finally:
        stack.start("notifier")
    [call] = await receiver.wait(hook)
    assert verified(call)["task_id"] == task_id
    await asyncio.sleep(1.5)
    assert len(receiver.to(hook)) == 1


async def test_notifier_takes_over_an_older_notifiers_pulled_consumer_where_it_stood(client, receiver, stack, js):
    before, after = "before-" + uuid.uuid4().hex[:6], "after-" + uuid.uuid4().hex[:6]
    first = await client.submit({"prompt": "x", "callback_url": receiver.url(before), **FAST})
    await receiver.wait(before)
    notifier = next(p for p in stack.procs if p.args[3] == "notifier" and p.poll() is None)
    assert Stack.stop(notifier) == 0
    # What an older notifier left: a pulled consumer that has acknowledged everything so far.
    await js.delete_consumer(subjects.TASKS, subjects.NOTIFIER_DURABLE)
    await js.add_consumer(subjects.TASKS, ConsumerConfig(
        durable_name=subjects.NOTIFIER_DURABLE, filter_subjects=subjects.webhook_triggers(),
        ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW, max_deliver=-1))
    try:
        second = await client.submit({"prompt": "y", "callback_url": receiver.url(after), **FAST})
        assert (await client.wait(second))["status"] == "completed"
    finally:
        stack.start("notifier")
    [call] = await receiver.wait(after)  # sent although it finished before the new notifier started
    assert verified(call)["task_id"] == second
    await asyncio.sleep(1.5)
    assert len(receiver.to(after)) == 1 and len(receiver.to(before)) == 1  # nothing acknowledged comes again
    assert verified(receiver.to(before)[0])["task_id"] == first
    assert (await js.consumer_info(subjects.TASKS, subjects.NOTIFIER_DURABLE)).config.deliver_subject


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.0.0.1/hook",
                                 "http://[::ffff:10.0.0.1]/hook", "http://192.168.1.20:8080/"])
async def test_private_and_metadata_targets_are_refused_and_queue_nothing(client, js, url):
    before = (await js.stream_info(subjects.JOBS)).state.last_seq, (await js.stream_info(subjects.TASKS)).state.last_seq
    resp = await client.post_generate({"prompt": "x", "callback_url": url})
    assert resp.status == 422
    assert (await resp.json())["detail"][0]["loc"] == ["body", "callback_url"]
    after = (await js.stream_info(subjects.JOBS)).state.last_seq, (await js.stream_info(subjects.TASKS)).state.last_seq
    assert after == before


async def test_progress_webhooks_are_throttled(client, receiver):
    hook = "progress-" + uuid.uuid4().hex[:6]
    task_id = await client.submit({"prompt": "x", "width": 512, "height": 512, "num_inference_steps": 40,
                                   "callback_url": receiver.url(hook), "webhook_events": ["progress", "completed"]})
    await client.wait(task_id)
    calls = await receiver.wait(hook, 2)
    await asyncio.sleep(0.5)
    bodies = [verified(c) for c in receiver.to(hook)]
    progress = [(c["at"], b) for c, b in zip(receiver.to(hook), bodies) if b["event"] == "progress"]
    assert progress and [b["event"] for b in bodies].count("completed") == 1
    assert all(0 < b["progress"] <= 1 and b["status"] == "processing" for _, b in progress)
    gaps = [later - earlier for (earlier, _), (later, _) in zip(progress, progress[1:])]
    assert all(gap >= 0.9 for gap in gaps)  # notifier.progress_min_interval_s defaults to 1 s
    assert len(calls) >= 2


async def test_two_notifiers_share_the_work_without_double_delivery(client, receiver, stack):
    second = stack.start("notifier")
    try:
        await asyncio.sleep(3)  # let it subscribe
        hooks = ["shared-" + uuid.uuid4().hex[:6] for _ in range(6)]
        for hook in hooks:
            await client.submit({"prompt": "x", "callback_url": receiver.url(hook), **FAST})
        for hook in hooks:
            await receiver.wait(hook)
        await asyncio.sleep(1)
        assert [len(receiver.to(hook)) for hook in hooks] == [1] * 6
    finally:
        Stack.stop(second)
