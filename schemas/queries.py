"""Request/reply between the API and the projector (`query.tasks.*`) and the task record both share."""

import msgspec

from .events import ImageResult, TaskStatus
from .jobs import SCHEMA_VERSION, JobSpec
from .subjects import Priority


class WebhookState(msgspec.Struct, kw_only=True):
    """Delivery of the task's webhook for its latest reported event."""

    status: str  # pending | retrying | delivered | failed
    about: str | None = None  # the event being delivered
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None


class TaskRecord(msgspec.Struct, kw_only=True):
    """One task as the projector holds it: the fold of its events."""

    task_id: str
    number: int | None = None  # TASKS stream sequence of `accepted`: the task's numeric id
    owner: str
    status: TaskStatus
    spec: JobSpec
    priority: Priority
    dialect: str
    request: dict | None = None  # the dialect's request as sent (see events.Accepted.request)
    callback_url: str | None = None
    images: list[ImageResult] = []
    error_message: str | None = None
    worker: str | None = None
    attempts: int = 0
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested_at: float | None = None
    webhook: WebhookState | None = None  # None: the task has no webhook


class TaskGet(msgspec.Struct, kw_only=True):
    task_id: str | None = None
    number: int | None = None  # or by numeric id
    schema_version: int = SCHEMA_VERSION


class TaskList(msgspec.Struct, kw_only=True):
    """One page of an owner's tasks, newest first, optionally by status and creation time."""

    owner: str
    statuses: list[TaskStatus] = []  # empty: any
    created_from: float | None = None  # unix seconds, inclusive
    created_to: float | None = None  # exclusive
    offset: int = 0
    limit: int = 20
    oldest_first: bool = False
    schema_version: int = SCHEMA_VERSION


class TaskPage(msgspec.Struct, kw_only=True):
    tasks: list[TaskRecord]
    total: int  # matching tasks on every page
    schema_version: int = SCHEMA_VERSION


class TaskReply(msgspec.Struct, kw_only=True):
    task: TaskRecord | None
    schema_version: int = SCHEMA_VERSION
