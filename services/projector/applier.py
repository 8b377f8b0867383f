"""The applier: task events as they are pushed to the projector, applied to the database in
batches, and the queue positions of pending tasks published when they change."""

import asyncio
import logging
import time

from schemas.codec import decode_event
from services.observability import telemetry
from services.task.events import TaskEvents

from .db import TaskDB

log = logging.getLogger("diffbus.projector")

BATCH = 4096  # events applied in one transaction at most (a rebuild commits this many at a time)
APPLY_AFTER_S = 0.05  # events wait at most this long to be applied with others (queries do not wait)
MAX_POSITIONS = 1000  # queue positions are published for the first this many pending tasks
POSITIONS_EVERY_S = 1.0  # a deep queue moves on every batch: its positions are published at most this often


def stream_seq(msg) -> int:
    """The stream sequence of a delivered JetStream message, read from its reply subject alone (nats-py's
    `msg.metadata` also parses the rest, a datetime included: a tenth of a rebuild's time)."""
    tokens = msg.reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])  # $JS.ACK.<stream>.… or $JS.ACK.<domain>.<hash>.<stream>.…


class QueuePositions:
    """Publishes `progress.<id>` with the queue position of each pending task when it changes."""

    def __init__(self, nc):
        self.nc = nc
        self.sent: dict[str, int] = {}
        self.last = 0.0
        self.soon: asyncio.Task | None = None

    def changed(self, positions) -> None:
        """After a batch: publish `positions()` now, or once the interval since the last time has passed."""
        if self.soon is None:
            self.soon = asyncio.create_task(self._publish_soon(positions))

    async def _publish_soon(self, positions) -> None:
        await asyncio.sleep(max(0.0, self.last + POSITIONS_EVERY_S - time.monotonic()))
        self.soon, self.last = None, time.monotonic()  # a change from here on is published next time
        await self.publish_changes(positions())

    def cancel(self) -> None:
        if self.soon is not None:
            self.soon.cancel()

    async def publish_changes(self, positions: dict[str, int]) -> None:
        for task_id, position in positions.items():
            if self.sent.get(task_id) != position:
                await TaskEvents(self.nc, task_id).queue_position(position)
        self.sent = positions


class Applier:
    """Events as they are delivered, applied together: APPLY_AFTER_S after the first one waiting, at
    BATCH, or before a query is answered, whichever comes first. Then the last is acked (and with it
    every one before)."""

    def __init__(self, tasks: TaskDB, queue: QueuePositions):
        self.tasks, self.queue = tasks, queue
        self.waiting: list = []  # (stream sequence, message) delivered and not yet applied
        self.timer: asyncio.TimerHandle | None = None
        self.received = tasks.applied_seq  # the highest stream sequence delivered to us
        self.reached: list[tuple[int, asyncio.Future]] = []  # (sequence, its waiter)

    async def until(self, seq: int) -> None:
        """Return once the event at stream sequence `seq` has been delivered (to be applied)."""
        if self.received < seq:
            waiter = asyncio.get_running_loop().create_future()
            self.reached.append((seq, waiter))
            await waiter

    async def on_event(self, msg) -> None:
        self.received = stream_seq(msg)
        if self.reached:
            for seq, waiter in self.reached:
                if seq <= self.received and not waiter.done():
                    waiter.set_result(None)
            self.reached = [(seq, w) for seq, w in self.reached if not w.done()]  # done: reached, or gave up
        self.waiting.append((self.received, msg))
        if len(self.waiting) >= BATCH:
            self.apply()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(APPLY_AFTER_S, self.apply)

    def apply(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.waiting:
            return
        waiting, self.waiting = self.waiting, []
        batch = []
        for seq, m in waiting:
            try:
                batch.append((seq, decode_event(m.data)))
            except Exception as e:  # noqa: BLE001 - an undecodable event is skipped, not retried
                log.error("skipping undecodable event at %s: %s", m.subject, e)
        upto, last = waiting[-1]
        with telemetry.applying("projector.apply", [m for _, m in waiting]):  # one span per event, in its trace
            self.tasks.apply(batch, upto=upto)
        asyncio.ensure_future(self._ack(last))
        self.queue.changed(lambda: self.tasks.queue_positions(MAX_POSITIONS))

    @staticmethod
    async def _ack(msg) -> None:
        try:
            await msg.ack()
        except Exception as e:  # noqa: BLE001 - unacked events come again and are applied once
            log.warning("ack failed: %s", e)
