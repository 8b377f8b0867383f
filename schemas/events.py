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


class Accepted(TaskEvent, tag="accepted"):
    owner: str
    spec: JobSpec
    priority: Priority = Priority.NORMAL
    dialect: str = "native"
    callback_url: str | None = None


class Started(TaskEvent, tag="started"):
    worker: str
    attempt: int = 1


class Completed(TaskEvent, tag="completed"):
    worker: str
    images: list[ImageResult]
    elapsed_s: float  # generation time on the worker


class Failed(TaskEvent, tag="failed"):
    error: str
    worker: str | None = None


class Cancelled(TaskEvent, tag="cancelled"):
    worker: str | None = None


AnyTaskEvent = Accepted | Started | Completed | Failed | Cancelled

STATUS_AFTER: dict[type[TaskEvent], TaskStatus] = {
    Accepted: TaskStatus.PENDING,
    Started: TaskStatus.PROCESSING,
    Completed: TaskStatus.COMPLETED,
    Failed: TaskStatus.FAILED,
    Cancelled: TaskStatus.CANCELLED,
}
