"""The native dialect's task routes: read, list, delete, cancel and follow live (SSE, WebSocket)."""

from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from schemas.events import TaskStatus
from schemas.queries import TaskRecord

from . import apidoc, history, live
from .context import CTX
from .errors import ApiError
from .native import DOCS, _principal
from .native_replies import CancelView, TaskPageView, TaskView
from .replies import json_reply


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def task_view(record: TaskRecord, file_url: Callable[[str], str], view: type[TaskView] = TaskView,
              **extra) -> TaskView:
    urls = [file_url(image.key) for image in record.images]
    return view(task_id=record.task_id, status=record.status, result_url=urls[0] if len(urls) == 1 else None,
                result_urls=urls if len(urls) > 1 else None, error_message=record.error_message,
                created_at=iso(record.created_at), updated_at=iso(record.updated_at),
                webhook=record.webhook or msgspec.UNSET, **extra)


def task_dict(record: TaskRecord, file_url: Callable[[str], str]) -> dict:
    """The task view as the live relays send it (the same Struct, as builtins)."""
    return msgspec.to_builtins(task_view(record, file_url))


HISTORY_PARAMS = (
    apidoc.Param("status", description="comma-separated statuses; default: any"),
    apidoc.Param("page", schema={"type": "integer", "minimum": 1, "default": 1}),
    apidoc.Param("page_size", schema={"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),
    apidoc.Param("start_at", description="ISO 8601 creation time, inclusive (UTC without a zone)"),
    apidoc.Param("end_at", description="ISO 8601 creation time, exclusive"),
)


SSE_EVENTS = {"type": "string", "description": (
    "Server-Sent Events: `state` (the task, as GET /api/v1/tasks/{task_id}), then `progress` (the Progress "
    "schema: step, total_steps, fraction, eta_s, preview; while pending, queue_position), then one of "
    "`completed` / `failed` / `cancelled` (the task), then the stream ends.")}
@DOCS.route("GET", "/api/v1/tasks/{task_id}", "A task's status and results", response=TaskView, errors=(401, 404),
            description="status pending/processing/completed/failed/cancelled; result_url for one image, "
                        "result_urls for several.")
async def get_task(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    record = await ctx.tasks.get(request.match_info["task_id"], _principal(request))
    return json_reply(task_view(record, ctx.file_urls(request)))


@DOCS.route("GET", "/api/v1/tasks", "This key's tasks, newest first, page by page", response=TaskPageView,
            errors=(401, 422), params=HISTORY_PARAMS)
async def list_tasks(request: web.Request) -> web.Response:
    """GET /api/v1/tasks?status=&page=&page_size=&start_at=&end_at=: the calling key's tasks, newest first."""
    ctx = request.app[CTX]
    principal = _principal(request)
    statuses = []
    for name in filter(None, request.query.get("status", "").split(",")):
        try:
            statuses.append(TaskStatus(name.strip()))
        except ValueError:
            raise history.query_error("status", f"one of {[s.value for s in TaskStatus]}") from None
    query = history.task_list(request, principal, statuses)
    page = await ctx.tasks.page(query)
    file_url = ctx.file_urls(request)
    return json_reply(TaskPageView(tasks=[task_view(r, file_url) for r in page.tasks], total=page.total,
                                   page=query.offset // query.limit + 1, page_size=query.limit))


@DOCS.route("DELETE", "/api/v1/tasks/{task_id}", "Delete a finished task and its images", status=204,
            errors=(401, 404, 409))
async def delete_task(request: web.Request) -> web.Response:
    """DELETE /api/v1/tasks/{id}: the task and its result images; 409 until it has finished."""
    await request.app[CTX].tasks.delete(request.match_info["task_id"], _principal(request))
    return web.Response(status=204)


@DOCS.route("POST", "/api/v1/tasks/{task_id}/cancel", "Cancel a task", response=CancelView, errors=(401, 404, 409),
            description="A pending task never starts; a running one stops within a step and ends cancelled.")
async def cancel_task(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    record = await ctx.tasks.cancel(request.match_info["task_id"], _principal(request))
    message = ("Task cancelled" if record.status is TaskStatus.CANCELLED
               else "Cancel requested; the task stops at its next step")
    return json_reply(task_view(record, ctx.file_urls(request), CancelView, message=message))


@DOCS.route("GET", "/api/v1/tasks/{task_id}/events", "Follow a task live (Server-Sent Events)", response=SSE_EVENTS,
            media_type="text/event-stream", errors=(401, 404),
            params=(apidoc.Param("Last-Event-ID", "header", description="resume after this event"),))
async def task_events(request: web.Request) -> web.StreamResponse:
    file_url = request.app[CTX].file_urls(request)
    return await live.sse(request, _principal(request), lambda record: task_dict(record, file_url))


@DOCS.route("GET", "/api/v1/ws", "Follow tasks live (WebSocket)", security=("ApiKey", "ApiKeyQuery"),
            errors=(400, 401), status=101, description=(
                "400 when the request is no WebSocket upgrade. "
                "Upgrade to a WebSocket; send {\"subscribe\": [\"<task_id>\", ...]} or {\"subscribe\": \"all\"} "
                "(this key's new tasks), optionally \"previews\": false and \"images\": true (a completed event "
                "then carries its images too, base64, in the order of its URLs: no download needed); receive "
                "{event, task_id, id, data} with "
                "the events of GET /api/v1/tasks/{task_id}/events (progress data: the Progress schema). The key "
                "may come as ?api_key=, since browsers cannot set headers on a WebSocket."))
async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Browsers cannot set headers on a WebSocket: the key may come as ?api_key= too."""
    ctx = request.app[CTX]
    principal = ctx.authenticate(request, ctx.config.api.key_header) or ctx.keyring.lookup(
        request.query.get("api_key"))
    if principal is None:
        raise ApiError(401, "Invalid or missing API key")
    file_url = ctx.file_urls(request)
    return await live.websocket(request, principal, lambda record: task_dict(record, file_url))


def register(app: web.Application) -> None:
    app.router.add_get("/api/v1/tasks", list_tasks)
    app.router.add_get("/api/v1/tasks/{task_id}", get_task)
    app.router.add_delete("/api/v1/tasks/{task_id}", delete_task)
    app.router.add_post("/api/v1/tasks/{task_id}/cancel", cancel_task)
    app.router.add_get("/api/v1/tasks/{task_id}/events", task_events)
    app.router.add_get("/api/v1/ws", websocket)
