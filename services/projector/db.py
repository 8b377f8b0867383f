"""The task database (SQLite via sqlite-utils): one row per task, written only by the projector.

Each row keeps the stream sequence of the last event applied to it, so applying an event twice (a
redelivery, a replay) changes nothing. Commits are not fsynced (WAL, synchronous=NORMAL): a crash of
the process loses nothing, and what a power cut loses is caught at the next start by `applied_seq`
(the last stream sequence applied) falling behind the consumer's ack floor, which rebuilds.
"""

from pathlib import Path

import sqlite_utils

from schemas.codec import decode, encode
from schemas.events import AnyTaskEvent
from schemas.jobs import queue_name
from schemas.queries import TaskList, TaskRecord
from services.task import fold

# Bump when the table's shape changes: a database of another version is rebuilt from the stream.
PROJECTION_VERSION = 4
MEMORY = ":memory:"  # a database that lives as long as the projector (rebuilt at each start)


COLUMNS = ("task_id", "number", "owner", "status", "kind", "model", "priority", "created_at", "updated_at",
           "last_seq", "record")
UPSERT = (f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
          f"ON CONFLICT (task_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}")


def remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def is_current(path: Path) -> bool:
    """False when the database is missing or was written by another projection version."""
    if not path.exists():
        return False
    db = sqlite_utils.Database(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0] == PROJECTION_VERSION
    finally:
        db.close()


class TaskDB:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite_utils.Database(memory=True) if str(path) == MEMORY else sqlite_utils.Database(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.tasks = self.db.table("tasks")
        if not self.tasks.exists():
            self.db.execute(f"PRAGMA user_version = {PROJECTION_VERSION}")
            self.tasks.create({
                "task_id": str, "number": int, "owner": str, "status": str, "kind": str, "model": str,
                "priority": str, "created_at": float, "updated_at": float, "last_seq": int, "record": str,
            }, pk="task_id")
            self.tasks.create_index(["owner", "created_at"])
            self.tasks.create_index(["created_at"])
            self.tasks.create_index(["status", "model"])
            self.tasks.create_index(["number"], unique=True)
            # Deleted tasks: a redelivered event of theirs must not bring a row back.
            self.db.table("deleted").create({"task_id": str, "last_seq": int}, pk="task_id")
            self.db.execute("CREATE TABLE applied (seq INTEGER NOT NULL)")
            self.db.execute("INSERT INTO applied VALUES (0)")
        # Per-key quotas count an owner's waiting and running tasks at every submit (made here, not only
        # with the table, so a database of this version from before has it too).
        self.db.execute("CREATE INDEX IF NOT EXISTS tasks_owner_status ON tasks (owner, status)")
        self.deleted = self.db.table("deleted")

    @property
    def applied_seq(self) -> int:
        """The highest stream sequence applied (0 for a new database)."""
        return self.db.execute("SELECT seq FROM applied").fetchone()[0]

    def get(self, task_id: str | None = None, number: int | None = None) -> TaskRecord | None:
        where, args = ("task_id = ?", [task_id]) if task_id is not None else ("number = ?", [number])
        row = next(self.tasks.rows_where(where, args, select="record"), None)
        return None if row is None else decode(row["record"].encode(), TaskRecord)

    def page(self, query: TaskList) -> tuple[list[TaskRecord], int]:
        """One page of `query.owner`'s tasks and how many match in all."""
        where, args = ["owner = ?"], [query.owner]
        if query.statuses:
            where.append(f"status IN ({', '.join('?' * len(query.statuses))})")
            args += [s.value for s in query.statuses]
        if query.created_from is not None:
            where.append("created_at >= ?")
            args.append(query.created_from)
        if query.created_to is not None:
            where.append("created_at < ?")
            args.append(query.created_to)
        clause = " AND ".join(where)
        total = self.db.execute(f"SELECT count(*) FROM tasks WHERE {clause}", args).fetchone()[0]
        order = "created_at, number" if query.oldest_first else "created_at DESC, number DESC"
        rows = self.tasks.rows_where(clause, args, select="record", order_by=order,
                                     limit=query.limit, offset=query.offset)
        return [decode(row["record"].encode(), TaskRecord) for row in rows], total

    def apply(self, events: list[tuple[int, AnyTaskEvent]], upto: int | None = None) -> None:
        """Apply (stream sequence, event) pairs in one transaction, recording `upto` (by default the last
        sequence given; more when the batch held events that could not be read) as applied. A task's
        events in one batch are folded in memory and its row written once."""
        conn = self.db.conn
        with conn:
            folded: dict[str, tuple[int, TaskRecord]] = {}  # task_id -> (last sequence, record) to write
            for seq, event in events:
                if event.task_id in folded:
                    last_seq, before = folded[event.task_id]
                else:
                    row = conn.execute("SELECT last_seq, record FROM tasks WHERE task_id = ?", [event.task_id]).fetchone()
                    if row is None and conn.execute("SELECT 1 FROM deleted WHERE task_id = ?",
                                                    [event.task_id]).fetchone():
                        continue
                    last_seq, before = (0, None) if row is None else (row[0], decode(row[1].encode(), TaskRecord))
                if before is not None and seq <= last_seq:
                    continue
                after = fold.apply(before, event, seq)
                if after is not None:
                    folded[event.task_id] = (seq, after)
                elif before is not None:  # deleted
                    folded.pop(event.task_id, None)
                    conn.execute("DELETE FROM tasks WHERE task_id = ?", [event.task_id])
                    conn.execute("INSERT OR REPLACE INTO deleted VALUES (?, ?)", [event.task_id, seq])
            conn.executemany(UPSERT, [
                [after.task_id, after.number, after.owner, after.status.value, after.spec.__struct_config__.tag,
                 queue_name(after.spec), after.priority.value, after.created_at, after.updated_at, seq,
                 encode(after).decode()] for seq, after in folded.values()])
            upto = upto if upto is not None else max((seq for seq, _ in events), default=0)
            conn.execute("UPDATE applied SET seq = max(seq, ?)", [upto])

    def queue_positions(self, limit: int) -> dict[str, int]:
        """Pending tasks -> how many tasks of the same model run before them (high priority first)."""
        rows = self.db.execute(
            "SELECT task_id, model FROM tasks WHERE status = 'pending' "
            "ORDER BY model, priority = 'normal', created_at, task_id LIMIT ?", [limit]).fetchall()
        positions, ahead, model = {}, 0, None
        for task_id, row_model in rows:
            ahead = 0 if row_model != model else ahead + 1
            model = row_model
            positions[task_id] = ahead
        return positions

    def rows(self) -> list[dict]:
        return list(self.tasks.rows_where(order_by="task_id"))

    def close(self) -> None:
        self.db.close()
