"""The API's side of the bus, shared by every dialect: store inputs, submit jobs, read tasks."""

import contextvars
import hashlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict

import nats.errors
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from schemas import subjects
from schemas.codec import decode, decode_event, encode
from schemas.events import Accepted, Progress, TaskStatus, WebhookEvent
from schemas.jobs import Job, JobSpec, job_subject, stages
from schemas.queries import TaskGet, TaskList, TaskPage, TaskRecord, TaskReply
from schemas.subjects import Priority
from services import bus, storage
from services.config import Config
from services.observability import metrics, telemetry
from services.task import fold
from services.task.events import TaskEvents

from .auth import Principal
from .errors import ApiError
from .inputs import InputImage
from .quotas import Quotas

log = logging.getLogger("diffbus.api")

IDEMPOTENCY_NS = uuid.UUID("6f1c3a52-3d0e-4d8e-9a34-5b0c8e2f7a10")
STORED_INPUTS = 4096  # input keys known to be stored, remembered for STORED_INPUT_S
STORED_INPUT_S = 600.0
MAX_IDEMPOTENCY_KEY = 255
MAX_TASK_NUMBER = 2**63 - 1  # task numbers are stream sequences (SQLite integers)
# Input images of the request being handled, stored once it is accepted (a rejected one stores nothing).
_STAGED: contextvars.ContextVar[dict[str, bytes] | None] = contextvars.ContextVar("staged_inputs", default=None)


class TaskIdTaken(ApiError):
    def __init__(self, task_id: str):
        super().__init__(409, f"task id {task_id!r} is already taken; choose another")


class Tasks:
    def __init__(self, config: Config, nc, store: storage.Storage | None = None, input_secret: bytes = b""):
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.storage = store or storage.ObjectStoreStorage(self.js)
        self.input_secret = input_secret  # names stored inputs (Keyring.secret): unguessable keys
        self.stored_inputs: OrderedDict[str, float] = OrderedDict()  # key -> when it was known stored
        self.quotas = Quotas(config, self.count)

    async def store_input(self, image: InputImage) -> str:
        """The key an input image will be stored under; jobs carry the key, never the bytes. The key is
        an HMAC of the content (the same image is one object; nobody without its URL can name it). The
        image is staged, and stored only once its task is accepted (submit): a request rejected after
        this stores nothing."""
        token = hmac.new(self.input_secret, image.sha256.encode(), hashlib.sha256).hexdigest()[:40]
        key = storage.input_key(token, image.extension)
        staged = _STAGED.get()
        if staged is None:
            _STAGED.set(staged := {})
        staged[key] = image.data
        return key

    async def _store_staged(self) -> None:
        """Store the staged inputs. A stored key already holds these bytes: rewriting it would purge the
        chunks a worker may be reading. Keys stored lately are remembered (inputs are never deleted by
        diffbus; the time limit covers an operator emptying the bucket)."""
        staged, now = _STAGED.get() or {}, time.monotonic()
        _STAGED.set(None)
        for key, data in staged.items():
            if now - self.stored_inputs.get(key, -STORED_INPUT_S) < STORED_INPUT_S:
                continue
            if not await self.storage.exists(key):
                await self.storage.put(key, data)
            self.stored_inputs[key] = now
            self.stored_inputs.move_to_end(key)
            if len(self.stored_inputs) > STORED_INPUTS:
                self.stored_inputs.popitem(last=False)

    @staticmethod
    def task_id_for(principal: Principal, idempotency_key: str | None) -> str:
        """A new task's id: random, or for an Idempotency-Key the same for the same owner and key (the
        owner is a stable id, so two owners' keys never meet)."""
        if idempotency_key:
            if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
                raise ApiError(422, [{"loc": ["header", "Idempotency-Key"], "type": "string_too_long",
                                      "msg": f"at most {MAX_IDEMPOTENCY_KEY} characters"}])
            return str(uuid.uuid5(IDEMPOTENCY_NS, f"{principal.owner}\n{idempotency_key}"))
        return str(uuid.uuid4())

    async def submit(self, spec: JobSpec, principal: Principal, *, dialect: str,
                     callback_url: str | None = None, webhook_events: list[WebhookEvent] | None = None,
                     priority: Priority = Priority.NORMAL, request: dict | None = None,
                     task_id: str | None = None, idempotency_key: str | None = None) -> TaskRecord:
        """Publish `accepted` (the audit record, with the whole spec), store the staged inputs, then
        queue the job; the new task. A `task_id` chosen by the client must be new: 409 when any task,
        of any owner, ever had it (while the TASKS stream holds it)."""
        if task_id is None and (existing := await self._existing(principal, idempotency_key)) is not None:
            # A retried submit: the task exists. Its job may not have been queued if the first try
            # was cut off (a NATS node lost) between the two publishes: queue it while the task has
            # neither started nor ended (the job's message id makes a second copy a no-op).
            if existing.status is TaskStatus.PENDING:
                await self._queue(self._job(existing.task_id, existing.spec, existing.priority, existing.owner))
            return existing
        chosen = task_id is not None
        task_id = task_id or self.task_id_for(principal, idempotency_key)
        job = self._job(task_id, spec, priority, principal.owner)
        events = TaskEvents(self.nc, task_id, js=self.js, kind=metrics.kind(spec))
        await self.quotas.check(principal)  # 429 over a quota: nothing is published
        with telemetry.span("publish", task_id=task_id, subject=job_subject(job)), self.quotas.submitting(principal):
            try:
                accepted, ack = await self._claim(
                    events, exclusive=chosen or bool(idempotency_key), owner=principal.owner, spec=spec,
                    priority=priority, dialect=dialect, callback_url=callback_url,
                    webhook_events=webhook_events, request=request)
            except TaskIdTaken:
                if chosen or (existing := await self._from_stream(task_id)) is None:
                    raise
                return existing  # the same Idempotency-Key, sent twice at once
            try:
                await self._store_staged()
                await self._queue(job)
            except Exception as e:  # noqa: BLE001 - storage or queue failed: the task must not stay pending
                log.error("task %s accepted but not queued: %s", task_id, e)
                await events.failed("the job could not be queued")
                raise ApiError(503, f"job queue unavailable: {e}") from e
        events.queued()
        return fold.apply(None, accepted, ack.seq)

    async def _existing(self, principal: Principal, idempotency_key: str | None) -> TaskRecord | None:
        """The task an Idempotency-Key already made (a retried submit), if any."""
        if not idempotency_key:
            return None
        return await self._from_stream(self.task_id_for(principal, idempotency_key))

    async def _claim(self, events: TaskEvents, exclusive: bool, **accepted) -> tuple[Accepted, object]:
        """Publish `accepted` (its event and publish ack); `exclusive`: only as the first event ever
        stored on its subject, so a task id is never reused (409 when it is taken, by anyone)."""
        try:
            event, ack = await events.accepted(exclusive=exclusive, **accepted)
        except APIError as e:
            if e.err_code == bus.WRONG_LAST_SEQUENCE:
                raise TaskIdTaken(events.task_id) from None
            raise ApiError(503, f"job queue unavailable: {e}") from e
        except (nats.errors.Error, TimeoutError) as e:
            raise ApiError(503, f"job queue unavailable: {e}") from e
        if ack.duplicate:  # the same message id within the dedupe window: ours (a retried publish)?
            stored = await bus.last_event(self.js, events.task_id, Accepted.name())
            if stored is None or decode_event(stored) != event:
                raise TaskIdTaken(events.task_id)
        return event, ack

    def _job(self, task_id: str, spec: JobSpec, priority: Priority, owner: str) -> Job:
        key = subjects.key_token(owner) if self.config.quotas.fair_sharing else None
        return Job(task_id=task_id, spec=spec, priority=priority, key=key)

    async def _queue(self, job: Job) -> None:
        """Publish a task's first job; its message id makes a second copy a no-op."""
        await bus.publish(self.js, job_subject(job), encode(job),
                          telemetry.headers({"Nats-Msg-Id": subjects.job_msg_id(job.task_id)}))

    async def get(self, task_id: str, principal: Principal) -> TaskRecord:
        """The task as the projector holds it; 404 when unknown or someone else's."""
        if not subjects.is_valid_task_id(task_id):
            raise ApiError(404, "Task not found")
        return self._visible(await self._query(TaskGet(task_id=task_id)) or await self._from_stream(task_id),
                             principal)

    async def get_number(self, number: int, principal: Principal) -> TaskRecord:
        """The task by numeric id (the stream sequence of its `accepted` event)."""
        if not 0 < number <= MAX_TASK_NUMBER:
            raise ApiError(404, "Task not found")
        record = await self._query(TaskGet(number=number))
        if record is None:  # not projected yet: the number names its `accepted` message
            try:
                event = decode_event((await self.js.get_msg(subjects.TASKS, number)).data)
            except (NotFoundError, nats.errors.Error, ValueError):
                event = None
            if isinstance(event, Accepted):
                record = await self._from_stream(event.task_id)
        return self._visible(record, principal)

    @staticmethod
    def _visible(record: TaskRecord | None, principal: Principal) -> TaskRecord:
        if record is None or not principal.may_see(record.owner):
            raise ApiError(404, "Task not found")
        return record

    async def _query(self, query: TaskGet) -> TaskRecord | None:
        try:
            reply = await self.nc.request(subjects.TASK_GET, encode(query), timeout=self.config.api.query_timeout_s)
            return decode(reply.data, TaskReply).task
        except (nats.errors.NoRespondersError, TimeoutError):
            # The projector is down or slow: callers fold the task's events from the stream.
            log.warning("projector did not answer %s", query)
            return None

    async def page(self, query: TaskList) -> TaskPage:
        """A page of one owner's tasks, from the projector (there is no stream fallback for listings)."""
        try:
            reply = await self.nc.request(subjects.TASK_LIST, encode(query), timeout=self.config.api.query_timeout_s)
        except (nats.errors.NoRespondersError, TimeoutError) as e:
            raise ApiError(503, "task history unavailable: the projector did not answer") from e
        return decode(reply.data, TaskPage)

    async def count(self, owner: str, status: TaskStatus) -> int:
        """How many of `owner`'s tasks have `status` (503 ApiError when the projector does not answer)."""
        return (await self.page(TaskList(owner=owner, statuses=[status], limit=0))).total

    async def delete(self, task_id: str, principal: Principal) -> TaskRecord:
        """Forget a finished task: `deleted` on the TASKS stream, then its result images (inputs are
        shared by content and stay). 409 while it is pending or running."""
        record = await self.get(task_id, principal)
        if not record.status.is_terminal():
            raise ApiError(409, f"Task is {record.status.value}; cancel it before deleting it")
        await TaskEvents(self.nc, task_id, js=self.js).deleted(principal.owner)
        for image in record.images:
            await self.storage.delete(image.key)
        if len(stages(record.spec)) > 1:  # images handed between stages (a hires fix) go too
            await self.storage.delete_prefix(storage.stage_prefix(task_id))
        return record

    async def cancel(self, task_id: str, principal: Principal) -> TaskRecord:
        """Ask for a task to stop: a pending one ends cancelled now and never starts; a running one
        stops at its next step (its worker ends it cancelled). 409 once finished."""
        record = await self.get(task_id, principal)
        if record.status.is_terminal():
            raise ApiError(409, f"Task already {record.status.value}")
        events = TaskEvents(self.nc, task_id, js=self.js, kind=metrics.kind(record.spec))
        record = fold.apply(record, await events.cancel_requested(principal.owner))
        if record.status is TaskStatus.PENDING:
            cancelled, stored = await events.cancelled()
            if not stored:  # it finished meanwhile
                return await self.get(task_id, principal)
            record = fold.apply(record, cancelled)
        return record

    async def wait(self, task_id: str, principal: Principal) -> TaskRecord:
        """The task once it has ended (synchronous endpoints); 504 after api.sync_timeout_s."""
        events = await self.nc.subscribe(subjects.task_event(task_id, "*"))  # first: nothing slips past
        try:
            record = await self.get(task_id, principal)
            deadline = time.monotonic() + self.config.api.sync_timeout_s
            while not record.status.is_terminal():
                msg = await events.next_msg(timeout=max(0.001, deadline - time.monotonic()))
                record = fold.apply(record, decode_event(msg.data)) or record
        except TimeoutError:
            raise ApiError(504, f"task {task_id} did not finish in {self.config.api.sync_timeout_s}s") from None
        finally:
            await events.unsubscribe()
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
                record = fold.apply(record, decode_event(msg.data), msg.metadata.sequence.stream)
                if msg.metadata.num_pending == 0:
                    return record
        finally:
            await sub.unsubscribe()
