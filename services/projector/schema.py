"""The task database's tables and indexes (SQLite). One row per task; `number` (the stream sequence of
its `accepted`) is the rowid, so rows are appended in stream order. `counts` holds how many tasks each
owner has in each status, kept by triggers in the transaction that changes a row, so a listing's
total and a quota's count never count rows. Two indexes besides task_id: each costs a rebuild about a
fifth of its rate."""

# Bump when the tables' shape changes: a database of another version is rebuilt from the stream.
PROJECTION_VERSION = 5

COLUMNS = ("task_id", "number", "owner", "status", "kind", "model", "priority", "created_at", "updated_at",
           "last_seq", "record")

BY_CREATED = "tasks_owner_created"  # an owner's tasks by time; status included, so filters read no row
BY_STATUS = "tasks_status_owner"  # an owner's tasks in one status by time; the pending tasks of everyone

TABLES = f"""
CREATE TABLE tasks (
    task_id TEXT NOT NULL UNIQUE, number INTEGER PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL,
    kind TEXT NOT NULL, model TEXT NOT NULL, priority TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, last_seq INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX {BY_CREATED} ON tasks (owner, created_at, number, status);
CREATE INDEX {BY_STATUS} ON tasks (status, owner, created_at, number);
-- Deleted tasks: a redelivered event of theirs must not bring a row back.
CREATE TABLE deleted (task_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE applied (seq INTEGER NOT NULL);
INSERT INTO applied VALUES (0);
CREATE TABLE counts (owner TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
                     PRIMARY KEY (owner, status)) WITHOUT ROWID;
CREATE TRIGGER tasks_counted AFTER INSERT ON tasks BEGIN
    INSERT INTO counts VALUES (new.owner, new.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tasks_uncounted AFTER DELETE ON tasks BEGIN
    UPDATE counts SET n = n - 1 WHERE owner = old.owner AND status = old.status;
END;
CREATE TRIGGER tasks_recounted AFTER UPDATE OF owner, status ON tasks
WHEN old.owner != new.owner OR old.status != new.status BEGIN
    UPDATE counts SET n = n - 1 WHERE owner = old.owner AND status = old.status;
    INSERT INTO counts VALUES (new.owner, new.status, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;
"""

UPSERT = (f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
          f"ON CONFLICT (task_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[2:])}")
