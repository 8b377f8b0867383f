"""Webhook bodies in each dialect's own shape."""

import msgspec

from schemas.events import (
    Accepted,
    Cancelled,
    Completed,
    Failed,
    Progress,
    Started,
    TaskStatus,
    WebhookEvent,
)
from services.storage import FileUrl
from services.task import fold
from services.views import fooocus_task


def file_urls(file_url: FileUrl, event) -> list[str]:
    return [file_url(image.key) for image in getattr(event, "images", [])]


def native(accepted: Accepted, event, file_url: FileUrl, started_at: float | None, number: int | None) -> dict:
    """seeds/sd_model_api.md: {task_id, status, image_url | image_urls | error_message}."""
    body: dict = {"task_id": accepted.task_id, "event": about(event).value}
    match event:
        case Completed():
            urls = file_urls(file_url, event)
            body["status"] = "completed"
            body.update({"image_url": urls[0]} if len(urls) == 1 else {"image_urls": urls})
        case Failed():
            body.update(status="failed", error_message=event.error)
        case Cancelled():
            body["status"] = "cancelled"
        case Started():
            body["status"] = "processing"
        case Progress():
            body.update(status="processing", progress=event.fraction, step=event.step,
                        total_steps=event.total_steps, eta_s=event.eta_s)
    return body


def fooocus(accepted: Accepted, event, file_url: FileUrl, started_at: float | None, number: int | None) -> dict:
    """seeds/fooocusapi.md: the task object of /tasks/{task_id}, as the task stands after `event`."""
    record = fold.apply(None, accepted, number)
    if started_at is not None:
        record = msgspec.structs.replace(record, status=TaskStatus.PROCESSING, started_at=started_at)
    progress = event if isinstance(event, Progress) else None
    if not isinstance(event, Progress):
        record = fold.apply(record, event)
    return fooocus_task.task_object(record, file_url, progress)


RENDERERS = {"native": native, "fooocus": fooocus}


def about(event) -> WebhookEvent:
    return WebhookEvent.PROGRESS if isinstance(event, Progress) else WebhookEvent(event.name())


def render(accepted: Accepted, event, file_url: FileUrl, started_at: float | None = None,
           number: int | None = None) -> dict:
    """`number`: the task's number (the stream sequence of its `accepted`), Fooocus's `id`."""
    return RENDERERS.get(accepted.dialect, native)(accepted, event, file_url, started_at, number)
