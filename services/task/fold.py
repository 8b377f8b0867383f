"""Task state as a fold of task events: pure, shared by the projector and by the API's read-through
for tasks the projector has not applied yet."""

import msgspec

from schemas.events import (
    STATUS_AFTER,
    WEBHOOK_RECORDS,
    Accepted,
    AnyTaskEvent,
    Cancelled,
    CancelRequested,
    Completed,
    Deleted,
    Failed,
    Started,
    WebhookAttempt,
    WebhookDelivered,
    WebhookFailed,
)
from schemas.queries import TaskRecord, WebhookState


def apply(record: TaskRecord | None, event: AnyTaskEvent, seq: int | None = None) -> TaskRecord | None:
    """The record after `event` (`seq`: its TASKS stream sequence, which numbers the task). A terminal
    status is final: later events do not change it, so a job redelivered after a worker died cannot
    reopen or double a finished task. After `deleted` there is no record."""
    if isinstance(event, Accepted):
        if record is not None:
            return record
        return TaskRecord(
            task_id=event.task_id, number=seq, owner=event.owner, status=STATUS_AFTER[Accepted], spec=event.spec,
            priority=event.priority, dialect=event.dialect, request=event.request, callback_url=event.callback_url,
            created_at=event.at, updated_at=event.at,
            webhook=WebhookState(status="pending") if event.callback_url else None)
    if record is None or isinstance(event, Deleted):
        return None
    if isinstance(event, WEBHOOK_RECORDS):  # deliveries go on after the task has ended
        return msgspec.structs.replace(record, webhook=_webhook(record.webhook, event))
    if record.status.is_terminal():
        return record
    if isinstance(event, CancelRequested):
        return msgspec.structs.replace(record, cancel_requested_at=event.at, updated_at=event.at)
    changes: dict = {"status": STATUS_AFTER[type(event)], "updated_at": event.at}
    match event:
        case Started():
            changes.update(worker=event.worker, attempts=event.attempt, started_at=event.at)
        case Completed():
            changes.update(worker=event.worker, images=event.images, finished_at=event.at)
        case Failed():
            changes.update(error_message=event.error, finished_at=event.at)
        case Cancelled():
            changes.update(finished_at=event.at)
    return msgspec.structs.replace(record, **changes)


def _webhook(state: WebhookState | None, event) -> WebhookState:
    state = state or WebhookState(status="pending")
    match event:
        case WebhookAttempt():
            ok = event.status_code is not None and event.status_code < 300
            return WebhookState(status="delivered" if ok else "retrying", about=event.about,
                                attempts=event.attempt, last_status_code=event.status_code,
                                last_error=event.error)
        case WebhookDelivered():
            return msgspec.structs.replace(state, status="delivered", about=event.about, attempts=event.attempts)
        case WebhookFailed():
            return msgspec.structs.replace(state, status="failed", about=event.about, attempts=event.attempts,
                                           last_error=event.error)
    return state
