"""The projector: folds the TASKS stream into SQLite and answers task queries over NATS."""

import asyncio
import logging
import time
from pathlib import Path

import msgspec
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from schemas import subjects
from schemas.codec import decode, decode_event, encode
from schemas.events import Progress, TaskStatus
from schemas.queries import TaskGet, TaskList, TaskPage, TaskReply
from services import bus, lifecycle, storage, telemetry
from services.config import Config
from services.lifecycle import stop_event

from . import db
from .db import TaskDB
from .retention import Retention

log = logging.getLogger("diffbus.projector")

BATCH = 1024  # events applied in one transaction at most (a rebuild commits this many at a time)
APPLY_AFTER_S = 0.05  # events wait at most this long to be applied with others (queries do not wait)
CATCH_UP_S = 3.0  # a query waits at most this long for the events stored before it (less than the API's query timeout)
MAX_POSITIONS = 1000  # queue positions are published for the first this many pending tasks


POSITIONS_EVERY_S = 1.0  # a deep queue moves on every batch: its positions are published at most this often


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

    async def publish_changes(self, positions: dict[str, int]) -> None:
        now = time.time()
        for task_id, position in positions.items():
            if self.sent.get(task_id) != position:
                await self.nc.publish(subjects.progress(task_id), encode(Progress(
                    task_id=task_id, at=now, status=TaskStatus.PENDING, queue_position=position)))
        self.sent = positions


class Applier:
    """Events as they are delivered, applied together: APPLY_AFTER_S after the first one waiting, at
    BATCH, or before a query is answered, whichever comes first. Then the last is acked (and with it
    every one before)."""

    def __init__(self, tasks: TaskDB, queue: QueuePositions):
        self.tasks, self.queue = tasks, queue
        self.waiting: list = []
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
        self.received = msg.metadata.sequence.stream
        if self.reached:
            for seq, waiter in self.reached:
                if seq <= self.received and not waiter.done():
                    waiter.set_result(None)
            self.reached = [(seq, w) for seq, w in self.reached if not w.done()]  # done: reached, or gave up
        self.waiting.append(msg)
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
        msgs, self.waiting = self.waiting, []
        batch = []
        for m in msgs:
            try:
                batch.append((m.metadata.sequence.stream, decode_event(m.data)))
            except Exception as e:  # noqa: BLE001 - an undecodable event is skipped, not retried
                log.error("skipping undecodable event at %s: %s", m.subject, e)
        with telemetry.applying("projector.apply", msgs):  # one span per event, in the trace the event carried
            self.tasks.apply(batch, upto=msgs[-1].metadata.sequence.stream)
        asyncio.ensure_future(self._ack(msgs[-1]))
        self.queue.changed(lambda: self.tasks.queue_positions(MAX_POSITIONS))

    @staticmethod
    async def _ack(msg) -> None:
        try:
            await msg.ack()
        except Exception as e:  # noqa: BLE001 - unacked events come again and are applied once
            log.warning("ack failed: %s", e)


class _StreamState(msgspec.Struct):
    messages: int = 0
    last_seq: int = 0


class _StreamInfo(msgspec.Struct):
    state: _StreamState | None = None
    error: dict | None = None


class StreamHead:
    """The last sequence of the TASKS stream, read after a query came. Queries that come before the
    read is sent share it; only its state is decoded."""

    def __init__(self, nc):
        self.nc = nc
        self.next: asyncio.Future | None = None

    def read(self) -> asyncio.Future:
        if self.next is None:
            self.next = asyncio.ensure_future(self._read())  # sent at the next turn of the loop
        return self.next

    async def _read(self) -> int:
        self.next = None  # a query from here on needs a read sent after it
        reply = await self.nc.request(f"$JS.API.STREAM.INFO.{subjects.TASKS}", b"", timeout=CATCH_UP_S)
        info = msgspec.json.decode(reply.data, type=_StreamInfo)
        if info.state is None:
            raise nats.errors.Error(f"stream info: {info.error}")
        return info.state.last_seq if info.state.messages else 0


async def _stale(js, db_path: Path) -> str | None:
    """Why the database and its consumer cannot go on together, or None. The consumer's ack floor may
    be past what the database holds (acknowledged events whose commit a power cut undid: commits are
    not fsynced), or the consumer may acknowledge one by one (made by an older projector)."""
    try:
        info = await js.consumer_info(subjects.TASKS, subjects.PROJECTOR_DURABLE)
    except NotFoundError:
        return None
    # nats-py gives the policy as the server spelled it ("all"), not as an AckPolicy member
    if AckPolicy(info.config.ack_policy) is not AckPolicy.ALL or not info.config.deliver_subject:
        return "its consumer was made by an older projector"
    tasks = TaskDB(db_path)
    try:
        if info.ack_floor.stream_seq > tasks.applied_seq:
            return "it misses events it acknowledged (a power cut?)"
    finally:
        tasks.close()
    return None


async def run(config: Config, rebuild: bool = False, clock=time.time) -> None:
    in_memory = config.projector.db == ":memory:"
    db_path = Path(db.MEMORY) if in_memory else config.data_path / config.projector.db
    rebuild = rebuild or in_memory
    nc = await bus.connect(config, "projector")
    js = nc.jetstream()
    await bus.ensure(js, config)
    if not rebuild and db_path.exists() and not db.is_current(db_path):
        log.info("%s was written by another projection version", db_path)
        rebuild = True
    if not rebuild and db_path.exists() and (why := await _stale(js, db_path)):
        log.warning("rebuilding %s: %s", db_path, why)
        rebuild = True
    if rebuild or not db_path.exists():
        db.remove(db_path)
        try:
            await js.delete_consumer(subjects.TASKS, subjects.PROJECTOR_DURABLE)
        except NotFoundError:
            pass
        log.info("building %s from the TASKS stream", db_path)
    tasks = TaskDB(db_path)

    queue = QueuePositions(nc)
    applier = Applier(tasks, queue)

    head = StreamHead(nc)

    async def caught_up() -> None:
        """Wait (at most CATCH_UP_S) for every event the stream holds now. A client that saw an event
        (on a core subscription, or in a webhook) and then asks must find it applied, though our
        consumer may deliver it later than the client heard of it."""
        async def reached_head() -> None:
            await applier.until(await asyncio.shield(head.read()))  # the read is shared: a timeout here leaves it be

        try:
            await asyncio.wait_for(reached_head(), CATCH_UP_S)
        except (TimeoutError, nats.errors.Error) as e:
            log.warning("answering from stream sequence %d: %r", applier.received, e)

    answering: set[asyncio.Task] = set()

    def answerer(query_type, answer):
        async def respond(msg) -> None:
            try:
                query = decode(msg.data, query_type)
            except Exception as e:  # noqa: BLE001 - a bad query must not stop the projector
                log.warning("bad %s query: %s", msg.subject, e)
                return
            await caught_up()
            applier.apply()  # every event delivered so far is in the answer
            await msg.respond(encode(answer(query)))

        async def on_query(msg) -> None:  # queries wait for the stream side by side, not in turn
            task = asyncio.create_task(respond(msg))
            answering.add(task)
            task.add_done_callback(answering.discard)
        return on_query

    def task_page(query: TaskList) -> TaskPage:
        found, total = tasks.page(query)
        return TaskPage(tasks=found, total=total)

    await queue.publish_changes(tasks.queue_positions(MAX_POSITIONS))
    query_subs = [
        await nc.subscribe(subjects.TASK_GET, queue=subjects.PROJECTOR_QUEUE, cb=answerer(
            TaskGet, lambda q: TaskReply(task=tasks.get(q.task_id, q.number)))),
        await nc.subscribe(subjects.TASK_LIST, queue=subjects.PROJECTOR_QUEUE, cb=answerer(TaskList, task_page)),
    ]
    # Pushed, not pulled: no request per event, and one ack (AckPolicy.ALL) per applied batch.
    events = await bus.retry(lambda: js.subscribe(
        subjects.ALL_TASK_EVENTS, durable=subjects.PROJECTOR_DURABLE, stream=subjects.TASKS, cb=applier.on_event,
        manual_ack=True, flow_control=True, idle_heartbeat=5.0, config=ConsumerConfig(
            ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL, ack_wait=30, max_ack_pending=10_000)),
        "projector consumer")
    retention = Retention(config, js, await storage.open_storage(config, js), tasks, clock)
    sweeping = asyncio.create_task(retention.run())
    log.info("projector ready: %s", db_path)
    lifecycle.started()
    try:
        await stop_event().wait()
    finally:
        sweeping.cancel()
        await events.unsubscribe()
        applier.apply()
        if queue.soon is not None:
            queue.soon.cancel()
        for sub in query_subs:
            await sub.unsubscribe()
        await nc.drain()
        tasks.close()
