"""The API's side of the bus, shared by every dialect: store inputs, submit jobs, read tasks."""

import logging
import time
import uuid

import nats.errors
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from schemas import subjects
from schemas.codec import decode, decode_event, encode
from schemas.events import (
    TERMINAL_WEBHOOK_EVENTS,
    Accepted,
    Cancelled,
    CancelRequested,
    Completed,
    Failed,
    Progress,
    Started,
    TaskStatus,
    WebhookEvent,
)
from schemas.jobs import Job, JobSpec, job_subject
from schemas.queries import TaskGet, TaskRecord, TaskReply
from schemas.subjects import Priority
from services import bus, metrics, storage, taskstate, telemetry
from services.config import Config

from .auth import Principal
from .errors import ApiError
from .inputs import InputImage

log = logging.getLogger("diffbus.api")

IDEMPOTENCY_NS = uuid.UUID("6f1c3a52-3d0e-4d8e-9a34-5b0c8e2f7a10")


class Tasks:
    def __init__(self, config: Config, nc, store: storage.Storage | None = None):
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.storage = store or storage.ObjectStoreStorage(self.js)

    async def store_input(self, image: InputImage) -> str:
        """Store an input image under its sha256; jobs carry the key, never the bytes."""
        key = storage.input_key(image.sha256, image.extension)
        await self.storage.put(key, image.data)
        return key

    @staticmethod
    def task_id_for(principal: Principal, idempotency_key: str | None) -> str:
        if idempotency_key:
            return str(uuid.uuid5(IDEMPOTENCY_NS, f"{principal.owner}\n{idempotency_key}"))
        return str(uuid.uuid4())

    async def submit(self, spec: JobSpec, principal: Principal, *, dialect: str,
                     callback_url: str | None = None, webhook_events: list[WebhookEvent] | None = None,
                     priority: Priority = Priority.NORMAL,
                     task_id: str | None = None, idempotency_key: str | None = None) -> str:
        """Publish `accepted` (the audit record, with the whole spec) and then the job."""
        task_id = task_id or self.task_id_for(principal, idempotency_key)
        if idempotency_key and await bus.last_event(self.js, task_id, Accepted.name()) is not None:
            # A retried submit: the task exists. Its job may not have been queued if the first try
            # was cut off (a NATS node lost) between the two publishes: queue it unless it has started
            # or ended (the job's message id makes a second copy of a queued job a no-op).
            if not await self._started_or_ended(task_id):
                job = Job(task_id=task_id, spec=spec, priority=priority)
                await bus.publish(self.js, job_subject(job), encode(job),
                                  telemetry.headers({"Nats-Msg-Id": subjects.job_msg_id(task_id)}))
            return task_id
        accepted = Accepted(task_id=task_id, at=time.time(), owner=principal.owner, spec=spec,
                            priority=priority, dialect=dialect, callback_url=callback_url,
                            webhook_events=list(webhook_events or TERMINAL_WEBHOOK_EVENTS))
        job = Job(task_id=task_id, spec=spec, priority=priority)
        with telemetry.span("publish", task_id=task_id, subject=job_subject(job)):
            try:
                await bus.publish_event(self.js, accepted)
            except (nats.errors.Error, TimeoutError) as e:
                raise ApiError(503, f"job queue unavailable: {e}") from e
            try:
                await bus.publish(self.js, job_subject(job), encode(job),
                                  telemetry.headers({"Nats-Msg-Id": subjects.job_msg_id(task_id)}))
            except (nats.errors.Error, TimeoutError) as e:
                log.error("task %s accepted but not queued: %s", task_id, e)
                await bus.publish_event(self.js, Failed(task_id=task_id, at=time.time(),
                                                        error="the job could not be queued"))
                raise ApiError(503, f"job queue unavailable: {e}") from e
        metrics.TASKS_ACCEPTED.labels(metrics.kind(spec)).inc()
        return task_id

    async def _started_or_ended(self, task_id: str) -> bool:
        for event in (Started, Completed, Failed, Cancelled):
            if await bus.last_event(self.js, task_id, event.name()) is not None:
                return True
        return False

    async def get(self, task_id: str, principal: Principal) -> TaskRecord:
        """The task as the projector holds it; 404 when unknown or someone else's."""
        if not subjects.is_valid_task_id(task_id):
            raise ApiError(404, "Task not found")
        record = None
        try:
            reply = await self.nc.request(subjects.TASK_GET, encode(TaskGet(task_id=task_id)),
                                          timeout=self.config.api.query_timeout_s)
            record = decode(reply.data, TaskReply).task
        except (nats.errors.NoRespondersError, TimeoutError):
            log.warning("projector did not answer; reading task %s from the stream", task_id)
        if record is None:
            # Not projected yet (or the projector is down): fold the task's events from the stream.
            record = await self._from_stream(task_id)
        if record is None or not principal.may_see(record.owner):
            raise ApiError(404, "Task not found")
        return record

    async def cancel(self, task_id: str, principal: Principal) -> TaskRecord:
        """Ask for a task to stop: a pending one ends cancelled now and never starts; a running one
        stops at its next step (its worker ends it cancelled). 409 once finished."""
        record = await self.get(task_id, principal)
        if record.status.is_terminal():
            raise ApiError(409, f"Task already {record.status.value}")
        request = CancelRequested(task_id=task_id, at=time.time(), by=principal.owner)
        cancels = await self.js.key_value(subjects.CANCEL_BUCKET)
        await cancels.put(task_id, encode(request))
        await bus.publish_event(self.js, request)
        record = taskstate.apply(record, request)
        if record.status is TaskStatus.PENDING:
            cancelled = Cancelled(task_id=task_id, at=time.time())
            if (await bus.publish_event(self.js, cancelled)).duplicate:  # it finished meanwhile
                return await self.get(task_id, principal)
            record = taskstate.apply(record, cancelled)
        return record

    async def last_progress(self, task_id: str) -> Progress | None:
        try:
            msg = await self.js.get_last_msg(subjects.PROGRESS, subjects.progress(task_id))
        except NotFoundError:
            return None
        return decode(msg.data, Progress)

    async def _from_stream(self, task_id: str) -> TaskRecord | None:
        if await bus.last_event(self.js, task_id, Accepted.name()) is None:
            return None
        sub = await self.js.subscribe(subjects.task_event(task_id, ">"), ordered_consumer=True,
                                      deliver_policy=DeliverPolicy.ALL)
        record = None
        try:
            while True:
                msg = await sub.next_msg(timeout=self.config.api.query_timeout_s)
                record = taskstate.apply(record, decode_event(msg.data))
                if msg.metadata.num_pending == 0:
                    return record
        finally:
            await sub.unsubscribe()
