"""The query server: answers `query.tasks.get` / `query.tasks.list` from the database, once every
event the stream held when the query came has been applied (or CATCH_UP_S has passed)."""

import asyncio
import logging

import msgspec
import nats.errors

from schemas import subjects
from schemas.codec import decode, encode
from schemas.queries import TaskGet, TaskList, TaskPage, TaskReply

from .applier import Applier
from .db import TaskDB

log = logging.getLogger("diffbus.projector")

CATCH_UP_S = 3.0  # a query waits at most this long for the events stored before it (less than the API's query timeout)


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
        reply = await self.nc.request(subjects.stream_info_api(subjects.TASKS), b"", timeout=CATCH_UP_S)
        info = msgspec.json.decode(reply.data, type=_StreamInfo)
        if info.state is None:
            raise nats.errors.Error(f"stream info: {info.error}")
        return info.state.last_seq if info.state.messages else 0


class QueryServer:
    """Answers task queries side by side (each waits for the stream on its own, not in turn)."""

    def __init__(self, nc, tasks: TaskDB, applier: Applier):
        self.nc, self.tasks, self.applier = nc, tasks, applier
        self.head = StreamHead(nc)
        self.answering: set[asyncio.Task] = set()
        self.subs: list = []

    async def start(self) -> None:
        self.subs = [
            await self.nc.subscribe(subjects.TASK_GET, queue=subjects.PROJECTOR_QUEUE,
                                    cb=self._answerer(TaskGet, self._get)),
            await self.nc.subscribe(subjects.TASK_LIST, queue=subjects.PROJECTOR_QUEUE,
                                    cb=self._answerer(TaskList, self._page)),
        ]

    async def stop(self) -> None:
        for sub in self.subs:
            await sub.unsubscribe()
        for task in list(self.answering):
            task.cancel()

    def _get(self, query: TaskGet) -> TaskReply:
        return TaskReply(task=self.tasks.get(query.task_id, query.number))

    def _page(self, query: TaskList) -> TaskPage:
        found, total = self.tasks.page(query)
        return TaskPage(tasks=found, total=total)

    def _answerer(self, query_type, answer):
        async def on_query(msg) -> None:
            task = asyncio.create_task(self._respond(msg, query_type, answer))
            self.answering.add(task)
            task.add_done_callback(self.answering.discard)
        return on_query

    async def _respond(self, msg, query_type, answer) -> None:
        try:
            query = decode(msg.data, query_type)
        except Exception as e:  # noqa: BLE001 - a bad query must not stop the projector
            log.warning("bad %s query: %s", msg.subject, e)
            return
        await self.caught_up()
        self.applier.apply()  # every event delivered so far is in the answer
        await msg.respond(encode(answer(query)))

    async def caught_up(self) -> None:
        """Wait (at most CATCH_UP_S) for every event the stream holds now. A client that saw an event
        (on a core subscription, or in a webhook) and then asks must find it applied, though our
        consumer may deliver it later than the client heard of it."""
        async def reached_head() -> None:
            await self.applier.until(await asyncio.shield(self.head.read()))  # shared: a timeout leaves it be

        try:
            await asyncio.wait_for(reached_head(), CATCH_UP_S)
        except (TimeoutError, nats.errors.Error) as e:
            log.warning("answering from stream sequence %d: %r", self.applier.received, e)
