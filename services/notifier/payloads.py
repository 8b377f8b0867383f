"""Webhook bodies in each dialect's own shape."""

from collections.abc import Callable

from schemas.events import (
    Accepted,
    Cancelled,
    Completed,
    Failed,
    Progress,
    Started,
    WebhookEvent,
)

FileUrl = Callable[[str], str]  # storage key -> download URL (Storage.url, bound to the API's base URL)


def file_urls(file_url: FileUrl, event) -> list[str]:
    return [file_url(image.key) for image in getattr(event, "images", [])]


def native(accepted: Accepted, event, file_url: FileUrl, started_at: float | None) -> dict:
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


FOOOCUS_STATUS = {Completed: "finished", Failed: "failed", Cancelled: "canceled", Started: "running",
                  Progress: "running"}


def fooocus(accepted: Accepted, event, file_url: FileUrl, started_at: float | None) -> dict:
    """seeds/fooocusapi.md: the task object of /tasks/{task_id}."""
    finished = isinstance(event, (Completed, Failed, Cancelled))
    progress = 100 if isinstance(event, Completed) else round(100 * getattr(event, "fraction", 0))
    return {
        "id": -1,
        "task_id": accepted.task_id,
        "req_params": {},
        "in_queue_mills": round(accepted.at * 1000),
        "start_mills": None if started_at is None else round(started_at * 1000),
        "finish_mills": round(event.at * 1000) if finished else -1,
        "task_status": FOOOCUS_STATUS[type(event)],
        "progress": progress,
        "preview": "",
        "webhook_url": accepted.callback_url,
        "result": file_urls(file_url, event),
        "error_message": event.error if isinstance(event, Failed) else None,
    }


RENDERERS = {"native": native, "fooocus": fooocus}


def about(event) -> WebhookEvent:
    return WebhookEvent.PROGRESS if isinstance(event, Progress) else WebhookEvent(event.name())


def render(accepted: Accepted, event, file_url: FileUrl, started_at: float | None = None) -> dict:
    return RENDERERS.get(accepted.dialect, native)(accepted, event, file_url, started_at)
