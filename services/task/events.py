"""A task's life as named transitions. Each method builds its event, publishes it on
`tasks.<id>.<event>` (progress on `progress.<id>`), counts it and logs it, here and nowhere else: no
other code constructs a task event, so no path can change a task without the stream, the metrics and
the log hearing of it."""

import asyncio
import logging
import time

from schemas import subjects
from schemas.codec import encode
from schemas.events import (
    TERMINAL_WEBHOOK_EVENTS,
    Accepted,
    Cancelled,
    CancelRequested,
    Completed,
    Deleted,
    Failed,
    ImageResult,
    Progress,
    Started,
    TaskEvent,
    TaskStatus,
    WebhookAttempt,
    WebhookDelivered,
    WebhookEvent,
    WebhookFailed,
)
from schemas.jobs import JobSpec
from schemas.subjects import Priority

from .. import bus
from ..observability import metrics

log = logging.getLogger("diffbus.tasks")


class TaskEvents:
    """The transitions of one task, as told by one service (`worker`: the worker's id, when a
    worker tells them; `kind`: the task's kind for metrics, e.g. txt2img, when known)."""

    def __init__(self, nc, task_id: str, *, js=None, worker: str | None = None, kind: str | None = None):
        self.nc, self.js = nc, js if js is not None else nc.jetstream()
        self.task_id, self.worker, self.kind = task_id, worker, kind

    async def _publish(self, event: TaskEvent, *qualifiers: object):
        return await bus.publish_event(self.js, event, *qualifiers)

    # --- the API's
    async def accepted(self, owner: str, spec: JobSpec, *, priority: Priority = Priority.NORMAL,
                       dialect: str = "native", callback_url: str | None = None,
                       webhook_events: list[WebhookEvent] | None = None, request: dict | None = None,
                       exclusive: bool = False):
        """The audit record, with the whole spec; returns (the event, its publish ack). Counted once
        its job is queued too (`queued`). `exclusive`: stored only as the first event ever on its
        subject (else APIError WRONG_LAST_SEQUENCE), so a task id is never reused."""
        event = Accepted(task_id=self.task_id, at=time.time(), owner=owner, spec=spec, priority=priority,
                         dialect=dialect, callback_url=callback_url, request=request,
                         webhook_events=list(webhook_events or TERMINAL_WEBHOOK_EVENTS))
        self.kind = metrics.kind(spec)
        return event, await bus.publish_event(self.js, event, expect_new=exclusive)

    def queued(self) -> None:
        metrics.TASKS_ACCEPTED.labels(self.kind or "unknown").inc()
        log.debug("task %s accepted and queued (%s)", self.task_id, self.kind)

    async def cancel_requested(self, by: str) -> CancelRequested:
        """Recorded in the cancel bucket first (a worker starting later still sees it), then told."""
        event = CancelRequested(task_id=self.task_id, at=time.time(), by=by)
        cancels = await self.js.key_value(subjects.CANCEL_BUCKET)
        await cancels.put(self.task_id, encode(event))
        await self._publish(event)
        log.info("task %s: cancel requested by %s", self.task_id, by)
        return event

    async def deleted(self, by: str) -> Deleted:
        event = Deleted(task_id=self.task_id, at=time.time(), by=by)
        await self._publish(event)
        log.info("task %s deleted by %s", self.task_id, by)
        return event

    # --- a worker's
    async def started(self, *, attempt: int, stage: int, stage_name: str, batch: list[str]) -> Started:
        event = Started(task_id=self.task_id, at=time.time(), worker=self.worker, attempt=attempt, stage=stage,
                        stage_name=stage_name, batch=batch)
        await self._publish(event, stage, attempt)
        log.debug("task %s: %s started on %s (attempt %d)", self.task_id, stage_name, self.worker, attempt)
        return event

    async def progress(self, progress: Progress) -> None:
        """Throttled by whoever reports it (StepReporter); core NATS, last value kept by PROGRESS."""
        await self.nc.publish(subjects.progress(self.task_id), encode(progress))

    async def queue_position(self, position: int) -> None:
        await self.progress(Progress(task_id=self.task_id, at=time.time(), status=TaskStatus.PENDING,
                                     queue_position=position))

    async def completed(self, images: list[ImageResult], elapsed_s: float) -> Completed:
        event = Completed(task_id=self.task_id, at=time.time(), worker=self.worker, images=images,
                          elapsed_s=elapsed_s)
        await self._publish(event)
        metrics.TASKS_COMPLETED.labels(self.kind or "unknown").inc()
        log.info("task %s completed on %s in %.2fs", self.task_id, self.worker, elapsed_s)
        return event

    async def failed(self, error: str) -> Failed:
        """Every failure ends here: bad input, a deterministic error, attempts used up, a job the
        API could not queue, a job whose every worker died."""
        event = Failed(task_id=self.task_id, at=time.time(), error=error, worker=self.worker)
        await self._publish(event)
        metrics.TASKS_FAILED.labels(self.kind or "unknown").inc()
        log.warning("task %s failed: %s", self.task_id, error)
        return event

    async def cancelled(self) -> tuple[Cancelled, bool]:
        """(the event, whether it was stored): a task that ended meanwhile keeps its first ending."""
        event = Cancelled(task_id=self.task_id, at=time.time(), worker=self.worker)
        ack = await self._publish(event)
        if not ack.duplicate:
            metrics.TASKS_CANCELLED.labels(self.kind or "unknown").inc()
            log.info("task %s cancelled", self.task_id)
        return event, not ack.duplicate

    # --- the notifier's
    async def webhook_attempt(self, about: WebhookEvent, webhook_id: str, attempt: int, *,
                              status_code: int | None, latency_ms: float, error: str | None) -> None:
        await self._publish(WebhookAttempt(
            task_id=self.task_id, at=time.time(), about=about, webhook_id=webhook_id, attempt=attempt,
            status_code=status_code, latency_ms=latency_ms, error=error), about.value, attempt)

    async def webhook_delivered(self, about: WebhookEvent, webhook_id: str, attempts: int) -> None:
        metrics.WEBHOOK_ATTEMPTS.labels("delivered").inc()
        await self._publish(WebhookDelivered(task_id=self.task_id, at=time.time(), about=about,
                                             webhook_id=webhook_id, attempts=attempts), about.value)

    def webhook_retry(self, about: WebhookEvent, delay_s: float) -> None:
        metrics.WEBHOOK_ATTEMPTS.labels("retry").inc()
        log.info("task %s: %s webhook retried in %.1fs", self.task_id, about.value, delay_s)

    async def webhook_failed(self, about: WebhookEvent, webhook_id: str, attempts: int, error: str) -> None:
        metrics.WEBHOOK_ATTEMPTS.labels("failed").inc()
        log.warning("task %s: %s webhook failed after %d attempt(s): %s", self.task_id, about.value, attempts, error)
        await self._publish(WebhookFailed(task_id=self.task_id, at=time.time(), about=about,
                                          webhook_id=webhook_id, attempts=attempts, error=error), about.value)


def progress_from_thread(loop: asyncio.AbstractEventLoop, nc, progress: Progress) -> None:
    """Publish a worker thread's progress message on the event loop (thread-safe)."""
    events = TaskEvents(nc, progress.task_id)
    loop.call_soon_threadsafe(lambda: asyncio.ensure_future(events.progress(progress)))
