"""Retention: a task expires as a whole `retention.days` after it was made. The projector sweeps now
and then: for each task made before the cutoff it purges the task's events from TASKS (every subject
`tasks.<id>.*`), deletes its result and intermediate images and the inputs no younger task uses, and
then its row. A rebuild from the stream therefore finds the same tasks as the live projection. The
stream's own max age (the same number of days) is the backstop for events nothing swept."""

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
import nats.errors
from nats.js.errors import NotFoundError

from schemas import subjects
from schemas.codec import decode
from schemas.jobs import stages
from schemas.queries import TaskRecord
from services import storage
from services.config import Config

from .db import TaskDB

log = logging.getLogger("diffbus.projector.retention")

BATCH = 200  # tasks expired per database read


def input_keys(record: TaskRecord) -> list[str]:
    """The stored inputs a task's spec names (init and mask images, sd_work_manager's several inputs)."""
    values = msgspec.structs.asdict(record.spec).values()
    keys = [v for value in values for v in (value if isinstance(value, list) else [value])]
    return [k for k in keys if isinstance(k, str) and k.startswith(storage.INPUT_PREFIX)]


class Retention:
    def __init__(self, config: Config, js, store: storage.Storage, tasks: TaskDB,
                 clock: Callable[[], float] = time.time):
        self.days = config.retention.days
        self.every_s = config.retention.sweep_every_s
        self.js, self.store, self.tasks, self.clock = js, store, tasks, clock

    def cutoff(self) -> float | None:
        """Tasks made before this (unix seconds) have expired; None when everything is kept."""
        return self.clock() - self.days * 86400 if self.days else None

    async def run(self) -> None:
        """Sweep at once, then every `retention.sweep_every_s`, until cancelled."""
        while True:
            try:
                if expired := await self.sweep():
                    log.info("retention: %d tasks expired", expired)
            except (nats.errors.Error, TimeoutError, OSError) as e:
                log.warning("retention sweep stopped: %r; trying again later", e)
            await asyncio.sleep(self.every_s)

    async def sweep(self) -> int:
        """Expire every task made before the cutoff; how many."""
        if (cutoff := self.cutoff()) is None:
            return 0
        expired = 0
        while batch := self._expired(cutoff):
            for record in batch:
                await self._expire(record, cutoff)
            expired += len(batch)
        await self._forget_deletions()
        return expired

    def _expired(self, cutoff: float) -> list[TaskRecord]:
        rows = self.tasks.conn.execute(  # by owner and time (schema.BY_CREATED): there is no index by time alone
            "SELECT record FROM tasks WHERE owner IN (SELECT owner FROM counts WHERE n > 0) AND created_at < ? LIMIT ?",
            [cutoff, BATCH]).fetchall()
        return [decode(row[0].encode(), TaskRecord) for row in rows]

    async def _expire(self, record: TaskRecord, cutoff: float) -> None:
        """Events first, then images, then the row: a sweep cut short finds the row and goes on."""
        await self.js.purge_stream(subjects.TASKS, subject=subjects.task_event(record.task_id, ">"))
        for image in record.images:
            await self.store.delete(image.key)
        if len(stages(record.spec)) > 1:
            await self.store.delete_prefix(storage.stage_prefix(record.task_id))
        for key in input_keys(record):
            if not self._used_since(key, cutoff):
                await self.store.delete(key)
        with self.tasks.conn:
            self.tasks.conn.execute("DELETE FROM tasks WHERE task_id = ?", [record.task_id])

    def _used_since(self, key: str, cutoff: float) -> bool:
        """Whether a task made at or after `cutoff` uses the stored input `key` (inputs are stored once
        per content and shared)."""
        return self.tasks.conn.execute(
            "SELECT 1 FROM tasks WHERE kind != 'txt2img' AND created_at >= ? AND instr(record, ?) LIMIT 1",
            [cutoff, f'"{key}"']).fetchone() is not None

    async def _forget_deletions(self) -> None:
        """Deleted tasks are remembered so a redelivered event of theirs cannot bring them back; once
        the stream holds none of their events, there is nothing left to guard against."""
        try:
            first = (await self.js.stream_info(subjects.TASKS)).state.first_seq
        except NotFoundError:
            return
        with self.tasks.conn:
            self.tasks.conn.execute("DELETE FROM deleted WHERE last_seq < ?", [first])
