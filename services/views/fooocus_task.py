"""FooocusAPI's task object (seeds/fooocusapi.md), built from a task record: what /tasks and
/tasks/{id} answer and what a Fooocus task's webhook carries, so the two cannot drift."""

from typing import Literal

import msgspec

from schemas.events import Progress, TaskStatus
from schemas.queries import TaskRecord
from services.storage import FileUrl

STATUS = {TaskStatus.PENDING: "pending", TaskStatus.PROCESSING: "running", TaskStatus.COMPLETED: "finished",
          TaskStatus.FAILED: "failed", TaskStatus.CANCELLED: "stop"}  # "stop": Fooocus's word for stopped


class TaskObject(msgspec.Struct):
    """A task as FooocusAPI's history keeps it."""

    id: int  # the task's number (-1 before it has one)
    task_id: str
    req_params: dict  # the request as sent, input images as URLs
    in_queue_mills: int | None
    start_mills: int | None
    finish_mills: int | None
    task_status: Literal["pending", "running", "finished", "failed", "stop"]
    progress: int  # 0-100
    webhook_url: str
    result: list[str]  # image URLs (base64 with require_base64)
    error_message: str | None
    preview: str | msgspec.UnsetType = msgspec.UNSET  # while running: the latest preview, a data URI


def mills(at: float | None) -> int | None:
    return None if at is None else round(at * 1000)


def percent(record: TaskRecord, progress: Progress | None) -> int:
    if record.status is TaskStatus.COMPLETED:
        return 100
    if progress is None or progress.status is not TaskStatus.PROCESSING:
        return 0
    return min(99, int(progress.fraction * 100))


def preview_uri(progress: Progress | None) -> str | None:
    if progress is None or not progress.preview:
        return None
    return f"data:image/{progress.preview_format or 'webp'};base64,{progress.preview}"


def task_object(record: TaskRecord, file_url: FileUrl, progress: Progress | None = None,
                results: list[str] | None = None) -> dict:
    """`file_url`: storage key -> download URL (Storage.url). `results`: what `result` lists instead
    of the image URLs (base64 when require_base64).
    A running task also carries `preview`, the latest preview as a data URI ("" before the first)."""
    view = TaskObject(
        id=record.number if record.number is not None else -1, task_id=record.task_id,
        req_params=record.request or {}, in_queue_mills=mills(record.created_at),
        start_mills=mills(record.started_at), finish_mills=mills(record.finished_at),
        task_status=STATUS[record.status], progress=percent(record, progress),
        webhook_url=record.callback_url or "", error_message=record.error_message,
        result=results if results is not None else [file_url(i.key) for i in record.images])
    if record.status is TaskStatus.PROCESSING:
        view.preview = preview_uri(progress) or ""
    return msgspec.to_builtins(view)
