"""A task's named transitions against a real nats-server: each is stored on the TASKS stream and
counted, a task keeps its first ending, every failure is counted (whoever tells it), and an exclusive
`accepted` never reuses a task id."""

import pytest
from nats.js.errors import APIError

from schemas import subjects
from schemas.codec import decode_event
from schemas.events import Accepted, Cancelled, Failed
from schemas.jobs import Txt2Img
from services import bus
from services.observability import metrics
from services.task.events import TaskEvents

SPEC = Txt2Img(model="demo", prompt="x", width=64, height=64, steps=2, guidance_scale=7.5, seed=1)


def count(name: str, kind: str) -> float:
    return metrics.REGISTRY.get_sample_value(f"diffbus_tasks_{name}_total", {"kind": kind}) or 0.0


async def test_a_task_keeps_its_first_ending_and_each_ending_is_counted_once(bare_nc):
    failed_before = count("failed", "txt2img")
    cancelled_before = count("cancelled", "txt2img")
    events = TaskEvents(bare_nc, "t1", worker="gpu-w1")
    await events.accepted("alice", SPEC)  # learns the task's kind
    await events.failed("the job could not be queued")
    _, stored = await events.cancelled()
    assert not stored  # it had failed already
    failed = decode_event(await bus.last_event(bare_nc.jetstream(), "t1", Failed.name()))
    assert (failed.error, failed.worker) == ("the job could not be queued", "gpu-w1")
    assert await bus.last_event(bare_nc.jetstream(), "t1", Cancelled.name()) is None
    assert count("failed", "txt2img") - failed_before == 1
    assert count("cancelled", "txt2img") == cancelled_before


async def test_a_failure_told_without_the_task_kind_is_still_counted(bare_nc):
    before = count("failed", "unknown")
    await TaskEvents(bare_nc, "t2").failed("no worker finished the job")
    assert count("failed", "unknown") - before == 1


async def test_an_exclusive_accepted_is_refused_where_the_task_id_was_ever_used(bare_nc):
    js = bare_nc.jetstream()
    event, ack = await TaskEvents(bare_nc, "t3").accepted("alice", SPEC, exclusive=True)
    assert not ack.duplicate and decode_event(await bus.last_event(js, "t3", Accepted.name())) == event
    # Past the dedupe window a second `accepted` is a new message: only the subject's sequence stops it.
    await bus.publish(js, subjects.task_event("t4", Accepted.name()), b"{}", {"Nats-Msg-Id": "earlier"})
    with pytest.raises(APIError) as refused:
        await TaskEvents(bare_nc, "t4").accepted("mallory", SPEC, exclusive=True)
    assert refused.value.err_code == bus.WRONG_LAST_SEQUENCE
    assert await bus.last_event(js, "t4", Accepted.name()) == b"{}"
