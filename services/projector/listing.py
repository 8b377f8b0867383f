"""One page of an owner's tasks and how many match, without reading or counting more rows than the
page needs. Totals come from `counts` (kept by triggers); with a time range they are counted over an
index that holds the status, so no row is read. The page is found in an index in its order:

- any status, or statuses that hold at least half of the owner's tasks: `BY_CREATED`, newest first,
  skipping the other statuses (at most about twice the page's offset + limit entries);
- statuses that hold fewer: `BY_STATUS`, one ordered range per status, merged here.

Then only the page's rows are read, by rowid. Pages are by offset (the dialects number them), so a
deep page walks its offset's index entries: about a millisecond a hundred thousand."""

import heapq
import sqlite3

from schemas.codec import decode
from schemas.queries import TaskList, TaskRecord

from .schema import BY_CREATED, BY_STATUS


def page(conn: sqlite3.Connection, query: TaskList) -> tuple[list[TaskRecord], int]:
    statuses = sorted({s.value for s in query.statuses})
    owned = _counted(conn, query.owner, [])
    matching = _counted(conn, query.owner, statuses) if statuses else owned
    selective = bool(statuses) and 2 * matching < owned
    ranged = query.created_from is not None or query.created_to is not None
    total = _count_in_range(conn, query, statuses, selective) if ranged else matching
    if query.limit <= 0 or query.offset >= total:
        return [], total
    if selective:
        numbers = _merged(conn, query, statuses)
    else:
        numbers = _numbers(conn, BY_CREATED, query, statuses, query.offset, query.limit)
    return _records(conn, numbers), total


def _counted(conn, owner: str, statuses: list[str]) -> int:
    where, args = _status_clause(statuses)
    return conn.execute(f"SELECT coalesce(sum(n), 0) FROM counts WHERE owner = ?{where}", [owner, *args]).fetchone()[0]


def _status_clause(statuses: list[str]) -> tuple[str, list]:
    return (f" AND status IN ({', '.join('?' * len(statuses))})", statuses) if statuses else ("", [])


def _range_clause(query: TaskList) -> tuple[str, list]:
    where, args = "", []
    if query.created_from is not None:
        where, args = " AND created_at >= ?", [query.created_from]
    if query.created_to is not None:
        where, args = where + " AND created_at < ?", args + [query.created_to]
    return where, args


def _count_in_range(conn, query: TaskList, statuses: list[str], selective: bool) -> int:
    index = BY_STATUS if selective else BY_CREATED
    by_status, status_args = _status_clause(statuses)
    in_range, range_args = _range_clause(query)
    return conn.execute(f"SELECT count(*) FROM tasks INDEXED BY {index} WHERE owner = ?{by_status}{in_range}",
                        [query.owner, *status_args, *range_args]).fetchone()[0]


def _numbers(conn, index: str, query: TaskList, statuses: list[str], offset: int, limit: int) -> list[tuple]:
    """(created_at, number) of the page, in the page's order, from one index."""
    by_status, status_args = _status_clause(statuses)
    in_range, range_args = _range_clause(query)
    order = "created_at, number" if query.oldest_first else "created_at DESC, number DESC"
    return conn.execute(
        f"SELECT created_at, number FROM tasks INDEXED BY {index} WHERE owner = ?{by_status}{in_range} "
        f"ORDER BY {order} LIMIT ? OFFSET ?", [query.owner, *status_args, *range_args, limit, offset]).fetchall()


def _merged(conn, query: TaskList, statuses: list[str]) -> list[tuple]:
    """The page from each status's own ordered range, merged."""
    end = query.offset + query.limit
    runs = [_numbers(conn, BY_STATUS, query, [status], 0, end) for status in statuses]
    merged = heapq.merge(*runs, reverse=not query.oldest_first)
    return list(merged)[query.offset:end]


def _records(conn, numbers: list[tuple]) -> list[TaskRecord]:
    wanted = [number for _, number in numbers]
    rows = dict(conn.execute(f"SELECT number, record FROM tasks WHERE number IN ({', '.join('?' * len(wanted))})",
                             wanted).fetchall())
    return [decode(rows[n], TaskRecord) for n in wanted if n in rows]
