"""A task's named transitions against a real nats-server: each is stored on the TASKS stream and
counted, a task keeps its first ending, and every failure is counted (whoever tells it)."""

from schemas.codec import decode_event
from schemas.events import Cancelled, Failed
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
