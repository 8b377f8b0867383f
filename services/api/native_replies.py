"""The shapes of the native dialect's replies, for its OpenAPI description (native.task_view and the
handlers build them; the tests check live replies against them)."""

from typing import Literal

import msgspec

from schemas.events import TaskStatus
from schemas.queries import WebhookState


class TaskCreated(msgspec.Struct):
    task_id: str
    status: Literal["pending"]
    message: str


class TaskView(msgspec.Struct):
    """A task as GET /api/v1/tasks/{task_id} shows it (task_view)."""

    task_id: str
    status: TaskStatus
    result_url: str | None  # one image
    result_urls: list[str] | None  # several images
    error_message: str | None
    created_at: str  # ISO 8601, UTC
    updated_at: str
    webhook: WebhookState | msgspec.UnsetType = msgspec.UNSET  # only for tasks with a callback_url


class CancelView(TaskView):
    message: str = ""


class TaskPageView(msgspec.Struct):
    tasks: list[TaskView]  # newest first
    total: int  # on every page
    page: int
    page_size: int


class ModelView(msgspec.Struct):
    name: str
    loaded: bool  # a live worker holds it loaded
    workers: int  # live workers serving it
    width: int  # the size a request without one gets (the family's native size unless config sets one)
    height: int
    family: str | None = None  # sd1 | sdxl ...; None until a worker serving it has announced
    sha256: str | None = None  # of a single-file checkpoint


class ModelList(msgspec.Struct):
    default: str
    models: list[ModelView]
