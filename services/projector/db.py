"""The task database (SQLite): one row per task, written only by the projector (tables in `schema`).

Each row keeps the stream sequence of the last event applied to it, so applying an event twice (a
redelivery, a replay) changes nothing. Commits are not fsynced (WAL, synchronous=NORMAL): a crash of
the process loses nothing, and what a power cut loses is caught at the next start by `applied_seq`
(the last stream sequence applied) falling behind the consumer's ack floor, which rebuilds.

A database being built from the stream keeps its journal in memory and is not fsynced until `built`, when it
turns to WAL and is marked with its version: a database whose build a crash cut short is built again.
"""

import sqlite3
from pathlib import Path

from schemas.codec import decode, encode
from schemas.events import AnyTaskEvent
from schemas.jobs import queue_name
from schemas.queries import TaskList, TaskRecord
from services.task import fold

from . import listing
from .schema import COLUMNS, PROJECTION_VERSION, TABLES, UPSERT

MEMORY = ":memory:"  # a database that lives as long as the projector (rebuilt at each start)
CACHE_MB = 256  # SQLite's page cache by default (projector.cache_mb)
LOOKUP_CHUNK = 500  # task ids looked up in one query


def remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def is_current(path: Path) -> bool:
    """False when the database is missing or was written by another projection version."""
    if not path.exists():
        return False
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0] == PROJECTION_VERSION
    except sqlite3.DatabaseError:  # not a database: a build cut short by a power cut
        return False
    finally:
        conn.close()


class TaskDB:
    def __init__(self, path: Path, cache_mb: int = CACHE_MB):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(str(path))  # a transaction begins at the first write; `with conn` commits
        self.conn.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")
        self.building = not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'tasks'").fetchone()
        if self.building:  # pages written once, straight into the database, never fsynced
            self.conn.execute("PRAGMA journal_mode=MEMORY")  # a failed batch still rolls back
            self.conn.execute("PRAGMA synchronous=OFF")
            self.conn.executescript(TABLES)
        else:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")

    def built(self) -> None:
        """The build from the stream has reached the stream's end as it was at the start: write it to
        disk, mark it with its version, and from here on commit as usual."""
        if not self.building:
            return
        self.building = False
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA journal_mode=WAL")  # switching fsyncs what was written
        self.conn.execute(f"PRAGMA user_version = {PROJECTION_VERSION}")
        self.conn.commit()
        self.conn.execute("PRAGMA synchronous=NORMAL")

    @property
    def applied_seq(self) -> int:
        """The highest stream sequence applied (0 for a new database)."""
        return self.conn.execute("SELECT seq FROM applied").fetchone()[0]

    def get(self, task_id: str | None = None, number: int | None = None) -> TaskRecord | None:
        where, arg = ("task_id = ?", task_id) if task_id is not None else ("number = ?", number)
        row = self.conn.execute(f"SELECT record FROM tasks WHERE {where}", [arg]).fetchone()
        return None if row is None else decode(row[0], TaskRecord)

    def page(self, query: TaskList) -> tuple[list[TaskRecord], int]:
        """One page of `query.owner`'s tasks and how many match in all."""
        return listing.page(self.conn, query)

    def apply(self, events: list[tuple[int, AnyTaskEvent]], upto: int | None = None) -> None:
        """Apply (stream sequence, event) pairs in one transaction, recording `upto` (by default the last
        sequence given; more when the batch held events that could not be read) as applied. The batch's
        tasks are read in a few queries, a task's events folded in memory, and its row written once."""
        with self.conn:
            stored, gone = self._lookup({event.task_id for _, event in events})
            folded: dict[str, tuple[int, TaskRecord]] = {}  # task_id -> (last sequence, record) to write
            for seq, event in events:
                task_id = event.task_id
                if task_id in folded:
                    last_seq, before = folded[task_id]
                elif task_id in gone:
                    continue
                elif task_id in stored:
                    last_seq, record = stored[task_id]
                    before = decode(record, TaskRecord)
                else:
                    last_seq, before = 0, None
                if before is not None and seq <= last_seq:
                    continue
                after = fold.apply(before, event, seq)
                if after is not None:
                    folded[task_id] = (seq, after)
                elif before is not None:  # deleted
                    self._delete(task_id, seq)
                    folded.pop(task_id, None)
                    gone.add(task_id)
            self.conn.executemany(UPSERT, [_row(seq, after) for seq, after in folded.values()])
            upto = upto if upto is not None else max((seq for seq, _ in events), default=0)
            self.conn.execute("UPDATE applied SET seq = max(seq, ?)", [upto])

    def _lookup(self, task_ids: set[str]) -> tuple[dict[str, tuple[int, str]], set[str]]:
        """The stored rows of these tasks (task_id -> (last sequence, record)), and which were deleted."""
        ids, stored, gone = list(task_ids), {}, set()
        for i in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[i:i + LOOKUP_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for task_id, last_seq, record in self.conn.execute(
                    f"SELECT task_id, last_seq, record FROM tasks WHERE task_id IN ({marks})", chunk):
                stored[task_id] = (last_seq, record)
            gone.update(row[0] for row in self.conn.execute(
                f"SELECT task_id FROM deleted WHERE task_id IN ({marks})", chunk))
        return stored, gone

    def _delete(self, task_id: str, seq: int) -> None:
        self.conn.execute("DELETE FROM tasks WHERE task_id = ?", [task_id])
        self.conn.execute("INSERT OR REPLACE INTO deleted VALUES (?, ?)", [task_id, seq])

    def queue_positions(self, limit: int) -> dict[str, int]:
        """Pending tasks -> how many tasks of the same model run before them (high priority first)."""
        rows = self.conn.execute(
            "SELECT task_id, model FROM tasks WHERE status = 'pending' "
            "ORDER BY model, priority = 'normal', created_at, task_id LIMIT ?", [limit]).fetchall()
        positions, ahead, model = {}, 0, None
        for task_id, row_model in rows:
            ahead = 0 if row_model != model else ahead + 1
            model = row_model
            positions[task_id] = ahead
        return positions

    def rows(self) -> list[dict]:
        cursor = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM tasks ORDER BY task_id")
        return [dict(zip(COLUMNS, row, strict=True)) for row in cursor]

    def close(self) -> None:
        self.conn.close()


def _row(seq: int, record: TaskRecord) -> list:
    return [record.task_id, record.number, record.owner, record.status.value, record.spec.__struct_config__.tag,
            queue_name(record.spec), record.priority.value, record.created_at, record.updated_at, seq,
            encode(record).decode()]
