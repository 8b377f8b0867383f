"""A worker's queues: pull consumers served in order (high priority first), woken by a doorbell (job
publishes reach core subscribers too, so an idle worker wakes at once), jobs held back while a batch
is gathered (heartbeated meanwhile), and the heartbeat itself."""

import asyncio
import logging
import math
import time
from collections import deque

from nats.js.api import AckPolicy, ConsumerConfig

from schemas import subjects

from .. import bus
from ..bus import keep_alive
from .fairshare import FairQueue, pull_wait

log = logging.getLogger("diffbus.worker")

IDLE_POLL_S = 1.0  # without a doorbell, look at every queue this often (redeliveries ring no bell)
FETCH_S = 0.05  # how long a pull request waits on a queue believed to hold work (no job rung for lately)


class Queues:
    """The job queues of one worker, in the order they are served."""

    def __init__(self, nc, js, worker_config):
        self.nc, self.js, self.config = nc, js, worker_config
        self.doorbell = asyncio.Event()
        self.pulls: list = []  # pull subscriptions, in the order they are served
        self.index_of: dict[str, int] = {}  # job subject -> index in pulls
        self.fair_of: dict[str, int] = {}  # job subject -> index of its FairQueue (fair sharing)
        self.ready: set[int] = set()  # queues believed to hold work
        self.rang: dict[int, float] = {}  # queue index -> when its doorbell last rang (monotonic)
        self.pending: dict[int, int] = {}  # queue index -> jobs left behind the last one fetched from it
        self.subs: list = []  # core subscriptions
        self.held: deque = deque()  # fetched while gathering a batch, run next
        self.holding: dict[int, asyncio.Task] = {}  # id(msg) -> its heartbeat while held

    async def open(self, queues: list[tuple[str, str]], on_max_deliveries, fair: bool = False,
                   config=None) -> None:
        """Subscribe to each (subject, durable) pair; `on_max_deliveries(msg)` hears of jobs whose
        every attempt died with its worker. `fair`: each key's jobs are also served in turn."""
        for subject, durable in queues:
            if fair:  # every key's jobs, in turn
                index = len(self.pulls)
                self.fair_of[subject] = index
                self.pulls.append(await FairQueue(
                    self.js, self.nc, subject, durable, self._consumer_config(), config,
                    ring=lambda i=index: self._ring_queue(i), on_max_deliveries=on_max_deliveries,
                    short_s=FETCH_S).start())
            self.index_of[subject] = len(self.pulls)  # jobs queued with no key (fair sharing off)
            self.pulls.append(await bus.retry(
                lambda subject=subject, durable=durable: self.js.pull_subscribe(
                    subject, durable=durable, stream=subjects.JOBS, config=self._consumer_config()),
                f"consumer {durable}"))
            self.subs.append(await self.nc.subscribe(subject, cb=self._ring))
            self.subs.append(await self.nc.subscribe(
                subjects.max_deliveries_advisory(subjects.JOBS, durable), queue=durable, cb=on_max_deliveries))
        self.wake_all()  # jobs may have queued before this worker started

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.config.ack_wait_s,
                              max_deliver=self.config.max_deliver, max_ack_pending=1000)

    async def _ring(self, msg) -> None:
        self._ring_queue(self.index_of[msg.subject])

    def _ring_queue(self, index: int) -> None:
        self.ready.add(index)
        self.rang[index] = time.monotonic()
        self.doorbell.set()

    def pull_wait(self, index: int) -> float:
        """How long a pull on queue `index` waits: until a job rung for lately is stored, else briefly."""
        return pull_wait(self.rang.get(index, -math.inf), self.config.pull_after_ring_s, FETCH_S)

    def index(self, subject: str) -> int:
        """Which pull a job's subject is served from (a key's subject: its fair-shared queue)."""
        return self.index_of[subject] if subject in self.index_of else self.fair_of[subject.rsplit(".", 1)[0]]

    def wake_all(self) -> None:
        self.ready.update(range(len(self.pulls)))
        self.doorbell.set()

    async def next(self):
        """A held job, or the next job from the first queue that holds one, or None after an idle wait."""
        if self.held:
            msg = self.held.popleft()
            self.holding.pop(id(msg)).cancel()
            return msg
        if not self.ready:
            self.doorbell.clear()
            try:
                await asyncio.wait_for(self.doorbell.wait(), IDLE_POLL_S)
            except TimeoutError:
                self.ready.update(range(len(self.pulls)))
            return None
        index = min(self.ready)
        fetched = await bus.fetch(self.pulls[index], 1, self.pull_wait(index))
        holds_more = getattr(self.pulls[index], "holds_more", False)  # a fair-shared queue knows better
        if not fetched:
            if self.pending.pop(index, 0) > 0:
                # The queue held more a moment ago: a short pull that came back empty is a server slow to
                # answer (a loaded cluster), not an empty queue. Pull again, waiting as if rung, rather
                # than idling until the next poll with work waiting.
                self.rang[index] = time.monotonic()
            elif not holds_more:
                self.ready.discard(index)
            return None
        [msg] = fetched
        self.pending[index] = msg.metadata.num_pending
        if msg.metadata.num_pending == 0 and not holds_more:
            self.ready.discard(index)
        return msg

    async def more_from(self, msg, count: int, wait_s: float) -> list:
        """Up to `count` more jobs from `msg`'s queue, waiting at most `wait_s` (dynamic batching)."""
        return await bus.fetch(self.pulls[self.index(msg.subject)], count, wait_s)

    def hold(self, msg) -> None:
        """Keep a fetched job to run next; heartbeat it so it is not redelivered meanwhile."""
        self.held.append(msg)
        self.holding[id(msg)] = asyncio.create_task(keep_alive(msg, self.config.ack_wait_s))

    async def close(self) -> None:
        for task in self.holding.values():
            task.cancel()
        for msg in self.held:  # fetched, never started: straight back to the queue
            await msg.nak()
        for sub in self.pulls + self.subs:
            await sub.unsubscribe()
