"""Task history shared by the dialects: paging and time-range parameters, listing and deleting."""

from datetime import UTC, datetime

from aiohttp import web

from schemas.events import TaskStatus
from schemas.queries import TaskList, TaskRecord

from .auth import Principal
from .context import CTX
from .errors import ApiError

MAX_PAGE_SIZE = 100


def query_error(field: str, msg: str) -> ApiError:
    return ApiError(422, [{"loc": ["query", field], "msg": msg, "type": "value_error"}])


def timestamp(request: web.Request, field: str) -> float | None:
    """An ISO 8601 query parameter as unix seconds; without a zone it is UTC."""
    raw = request.query.get(field)
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(raw.replace(" ", "+") if raw.count(" ") == 1 and "T" in raw else raw)
    except ValueError:
        raise query_error(field, "expected an ISO 8601 time like 2024-07-03T12:22:30") from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def number(request: web.Request, field: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(field)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise query_error(field, "expected an integer") from None
    if not low <= value <= high:
        raise query_error(field, f"must be between {low} and {high}")
    return value


def task_list(request: web.Request, principal: Principal, statuses: list[TaskStatus],
              first_page: int = 1) -> TaskList:
    """The calling key's tasks in `statuses`, paged by ?page=&page_size= within ?start_at=&end_at=."""
    page = number(request, "page", first_page, first_page, 1_000_000)
    size = number(request, "page_size", 20, 1, MAX_PAGE_SIZE)
    start, end = timestamp(request, "start_at"), timestamp(request, "end_at")
    if start is not None and end is not None and end < start:
        raise query_error("end_at", "end_at is before start_at")
    return TaskList(owner=principal.owner, statuses=statuses, created_from=start, created_to=end,
                    offset=(page - first_page) * size, limit=size)


async def delete_all(request: web.Request, principal: Principal, query: TaskList) -> list[TaskRecord]:
    """Delete every finished task the query matches (all pages); the deleted records."""
    tasks = request.app[CTX].tasks
    query.statuses = [s for s in TaskStatus if s.is_terminal()]
    query.offset, query.limit, query.oldest_first = 0, MAX_PAGE_SIZE, True
    found: list[TaskRecord] = []
    while True:  # every page first: deleting as we go would shift the pages under us
        page = await tasks.page(query)
        found += page.tasks
        query.offset += query.limit
        if len(page.tasks) < query.limit:
            break
    return [await tasks.delete(record.task_id, principal) for record in found]
