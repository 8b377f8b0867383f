"""What a worker knows of cancel requests, against a real nats-server: requests made before it
started, and requests made while a job runs, by the bucket or by the event alone."""

import asyncio
import time

from schemas import subjects
from schemas.codec import encode
from schemas.events import CancelRequested
from services import bus
from services.worker.cancels import Cancels


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_cancels_known_before_start_and_as_they_happen(bare_nc):
    js = bare_nc.jetstream()
    bucket = await js.key_value(subjects.CANCEL_BUCKET)
    await bucket.put("before", encode(CancelRequested(task_id="before", at=0.0, by="alice")))
    cancels = Cancels()
    await cancels.start(bare_nc, js)
    try:
        before = cancels.watch("before")
        assert before.is_set()  # asked while no worker listened: it never starts
        cancels.unwatch("before", before)
        running = cancels.watch("running")
        other = cancels.watch("other")
        assert not running.is_set()
        await bucket.put("running", encode(CancelRequested(task_id="running", at=0.0, by="alice")))  # what the API does first
        await until(running.is_set)
        await bus.publish_event(js, CancelRequested(task_id="other", at=0.0, by="alice"))  # the event alone also counts
        await until(other.is_set)
        cancels.unwatch("running", running)
        cancels.unwatch("other", other)
        assert not cancels.running
        assert cancels.watch("running").is_set()  # remembered for the task's next stage
        assert not cancels.watch("never").is_set()
    finally:
        await cancels.stop()
