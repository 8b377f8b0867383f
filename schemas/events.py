"""TaskEvent: every event of a task's life, published on `tasks.<task_id>.<event>` (TASKS stream).
The projector folds them into task state; auditors replay them."""

from enum import StrEnum

import msgspec

from .jobs import SCHEMA_VERSION, JobSpec
from .subjects import Priority


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}


class ImageResult(msgspec.Struct, kw_only=True):
    key: str  # storage key
    content_type: str
    width: int
    height: int
    seed: int


class TaskEvent(msgspec.Struct, kw_only=True, tag_field="event"):
    task_id: str
    at: float  # unix seconds
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def name(cls) -> str:
        return cls.__struct_config__.tag


class WebhookEvent(StrEnum):
    """What a task's webhook may be told of."""

    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_WEBHOOK_EVENTS = [WebhookEvent.COMPLETED, WebhookEvent.FAILED, WebhookEvent.CANCELLED]


class Accepted(TaskEvent, kw_only=True, tag="accepted"):
    owner: str
    spec: JobSpec
    priority: Priority = Priority.NORMAL
    dialect: str = "native"
    callback_url: str | None = None
    webhook_events: list[WebhookEvent] = msgspec.field(default_factory=lambda: list(TERMINAL_WEBHOOK_EVENTS))
    request: dict | None = None  # the dialect's request as the client sent it, input images as URLs


class CancelRequested(TaskEvent, kw_only=True, tag="cancel_requested"):
    by: str  # the owner (or admin) who asked


class Started(TaskEvent, kw_only=True, tag="started"):
    worker: str
    attempt: int = 1
    stage: int = 0  # index into schemas.jobs.stages(spec)
    stage_name: str = "generate"
    batch: list[str] = []  # with dynamic batching: every task in the same pipeline call


class Completed(TaskEvent, kw_only=True, tag="completed"):
    worker: str
    images: list[ImageResult]
    elapsed_s: float  # generation time on the worker


class Failed(TaskEvent, kw_only=True, tag="failed"):
    error: str
    worker: str | None = None


class Cancelled(TaskEvent, kw_only=True, tag="cancelled"):
    worker: str | None = None


class Deleted(TaskEvent, kw_only=True, tag="deleted"):
    """The task and its result images are gone; replays and rebuilt projections skip it."""

    by: str


class WebhookAttempt(TaskEvent, kw_only=True, tag="webhook_attempt"):
    """One POST to the task's webhook (recorded by the notifier)."""

    about: WebhookEvent
    webhook_id: str
    attempt: int
    status_code: int | None = None  # None: no answer (network error, timeout)
    latency_ms: float
    error: str | None = None


class WebhookDelivered(TaskEvent, kw_only=True, tag="webhook_delivered"):
    about: WebhookEvent
    webhook_id: str
    attempts: int


class WebhookFailed(TaskEvent, kw_only=True, tag="webhook_failed"):
    about: WebhookEvent
    webhook_id: str
    attempts: int
    error: str


AnyTaskEvent = (Accepted | CancelRequested | Started | Completed | Failed | Cancelled | Deleted
                | WebhookAttempt | WebhookDelivered | WebhookFailed)
WEBHOOK_RECORDS = (WebhookAttempt, WebhookDelivered, WebhookFailed)

STATUS_AFTER: dict[type[TaskEvent], TaskStatus] = {
    Accepted: TaskStatus.PENDING,
    Started: TaskStatus.PROCESSING,
    Completed: TaskStatus.COMPLETED,
    Failed: TaskStatus.FAILED,
    Cancelled: TaskStatus.CANCELLED,
}


class Progress(msgspec.Struct, kw_only=True):
    """The latest progress of a task, on `progress.<task_id>` (PROGRESS stream, last value kept).

    While pending: `queue_position` (tasks ahead of it; 0 = next). While processing: steps done over
    the whole task, its fraction 0-1, the ETA from the measured step rate, and now and then a small
    preview decoded from the latents (base64, `preview_format`)."""

    task_id: str
    at: float
    status: TaskStatus
    step: int = 0  # within the stage
    total_steps: int = 0
    fraction: float = 0.0  # over the whole task, every stage
    stage: int = 0
    stage_name: str | None = None
    stages: int = 1
    eta_s: float | None = None
    queue_position: int | None = None
    attempt: int = 0
    preview: str | None = None
    preview_format: str | None = None  # "webp" | "jpeg"
    preview_width: int | None = None
    preview_height: int | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def tick(self) -> int:
        """Orders a task's progress messages: later stages, attempts and steps give larger ticks."""
        return (self.stage * 100 + self.attempt) * 1_000_000 + self.step
