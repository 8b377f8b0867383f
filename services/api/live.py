"""Live task events for HTTP watchers: Server-Sent Events for one task, a WebSocket for many.

A Relay turns what NATS carries (progress messages, task events) into what a watcher sees: the
current state first, then progress in order without repeats, then the terminal state, then the end.
"""

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec
from aiohttp import WSMsgType, web

from schemas import subjects
from schemas.codec import decode, decode_event
from schemas.events import Accepted, Progress, TaskStatus
from schemas.queries import TaskRecord
from services.task import fold

from .context import CTX
from .errors import ApiError

KEEPALIVE_S = 15.0
REFRESH_S = 2.0  # a silent watcher re-reads the task, in case an event slipped past its subscription
DONE_ID = "done"  # the SSE id of the terminal event


@dataclass
class Out:
    name: str  # state | progress | completed | failed | cancelled
    data: dict
    id: str | None = None


@dataclass
class Relay:
    record: TaskRecord
    view: Callable[[TaskRecord], dict]
    last_tick: int = -1
    previews: bool = True
    done: bool = False
    queue_position: int | None = None

    def start(self, last_progress: Progress | None) -> list[Out]:
        out = self._state()
        if not self.done and last_progress is not None:
            out += self.on_progress(last_progress)
        return out

    def on_progress(self, progress: Progress) -> list[Out]:
        if self.done:
            return []
        if progress.status is TaskStatus.PENDING:  # queue position: news when it moves
            if self.record.status is not TaskStatus.PENDING or progress.queue_position == self.queue_position:
                return []
            self.queue_position = progress.queue_position
            return [Out("progress", self._data(progress))]
        if progress.tick <= self.last_tick:
            return []
        out = []
        if self.record.status is TaskStatus.PENDING:  # its `started` came before we listened
            out = self.refresh(msgspec.structs.replace(self.record, status=TaskStatus.PROCESSING))
        self.last_tick = progress.tick
        return out + [Out("progress", self._data(progress), str(progress.tick))]

    def _data(self, progress: Progress) -> dict:
        data = msgspec.to_builtins(progress)
        if not self.previews:
            for key in ("preview", "preview_format", "preview_width", "preview_height"):
                data.pop(key, None)
        return data

    def on_event(self, event) -> list[Out]:
        return self.refresh(fold.apply(self.record, event) or self.record)

    def refresh(self, record: TaskRecord) -> list[Out]:
        """Take a newer record; its state is news only if the status changed."""
        if self.done or record.status == self.record.status:
            return []
        self.record = record
        return self._state()

    def on_nats(self, msg) -> list[Out]:
        if msg.subject.startswith("progress."):
            return self.on_progress(decode(msg.data, Progress))
        return self.on_event(decode_event(msg.data))

    def _state(self) -> list[Out]:
        if self.record.status.is_terminal():
            self.done = True
            return [Out(self.record.status.value, self.view(self.record), DONE_ID)]
        return [Out("state", self.view(self.record))]


def _resume_tick(last_event_id: str | None) -> int:
    try:
        return int(last_event_id) if last_event_id else -1
    except ValueError:
        return -1


async def _subscribe(nc, task_id: str, queue: asyncio.Queue) -> list:
    async def put(msg):
        queue.put_nowait(msg)

    return [await nc.subscribe(subjects.progress(task_id), cb=put),
            await nc.subscribe(subjects.task_event(task_id, ">"), cb=put)]


async def follow(ctx, task_id: str, principal, view: Callable[[TaskRecord], dict], last_tick: int = -1,
                 previews: bool = True) -> AsyncIterator[Out | None]:
    """A task's Outs as they happen, ending with the terminal one; None after each quiet REFRESH_S (a
    chance for keep-alives). Raises ApiError (404) before yielding anything for an unknown task."""
    queue: asyncio.Queue = asyncio.Queue()
    subs = await _subscribe(ctx.tasks.nc, task_id, queue)  # before reading state: nothing is missed
    try:
        relay = Relay(await ctx.tasks.get(task_id, principal), view, last_tick=last_tick, previews=previews)
        pending = relay.start(await ctx.tasks.last_progress(task_id))
        while True:
            for out in pending:
                yield out
            if relay.done:
                return
            try:
                pending = relay.on_nats(await asyncio.wait_for(queue.get(), REFRESH_S))
            except TimeoutError:
                pending = relay.refresh(await ctx.tasks.get(task_id, principal))
                yield None
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def sse(request: web.Request, principal, view: Callable[[TaskRecord], dict]) -> web.StreamResponse:
    """GET …/tasks/{id}/events. Reconnect with Last-Event-ID to resume; after the terminal event a
    reconnect gets 204 (which tells EventSource to stop)."""
    ctx = request.app[CTX]
    task_id = request.match_info["task_id"]
    last_id = request.headers.get("Last-Event-ID")
    events = follow(ctx, task_id, principal, view, last_tick=_resume_tick(last_id))
    try:
        first = await anext(events)  # 404 before the stream starts
        if last_id == DONE_ID:
            return web.Response(status=204)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        out = first
        while True:
            if out is not None:
                lines = [f"event: {out.name}", f"data: {json.dumps(out.data)}"]
                if out.id is not None:
                    lines.insert(0, f"id: {out.id}")
                await resp.write(("\n".join(lines) + "\n\n").encode())
                quiet_since = loop.time()
            elif loop.time() - quiet_since > KEEPALIVE_S:
                await resp.write(b": keep-alive\n\n")
                quiet_since = loop.time()
            try:
                out = await anext(events)
            except StopAsyncIteration:
                return resp
    finally:
        await events.aclose()


class WatchSession:
    """One WebSocket connection's watch over tasks. Commands come as text frames:
    {"subscribe": ["<task_id>", ...]} or {"subscribe": "all"} (every task of this key from now on),
    optionally "previews": false and "images": true (completed events then carry the images, base64,
    beside their URLs). Each task's Outs go out as {"event", "task_id", "id", "data"} through
    `socket.send_json`; NATS messages are queued and relayed in order by `pump`."""

    def __init__(self, socket, tasks, principal, view: Callable[[TaskRecord], dict]):
        self.socket, self.tasks, self.principal, self.view = socket, tasks, principal, view
        self.relays: dict[str, Relay] = {}
        self.subs: list = []
        self.everything = False
        self.previews, self.images = True, False
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pumping: asyncio.Task | None = None

    async def __aenter__(self) -> "WatchSession":
        self.pumping = asyncio.create_task(self.pump())
        return self

    async def __aexit__(self, *exc) -> None:
        self.pumping.cancel()
        for sub in self.subs:
            await sub.unsubscribe()

    async def command(self, text: str) -> None:
        try:
            command = json.loads(text)
            wanted = command["subscribe"]
            if not (wanted == "all" or isinstance(wanted, str) or isinstance(wanted, list)
                    and all(isinstance(task_id, str) for task_id in wanted)):
                raise TypeError("task ids are strings")
        except (ValueError, KeyError, TypeError, RecursionError):
            await self.socket.send_json({"event": "error", "data": {"detail": 'expected {"subscribe": [...]}'}})
            return
        self.previews = bool(command.get("previews", self.previews))
        self.images = bool(command.get("images", self.images))
        if wanted == "all":
            if not self.everything:
                self.everything = True
                self.subs.append(await self.tasks.nc.subscribe(subjects.progress("*"), cb=self.queue.put))
                self.subs.append(await self.tasks.nc.subscribe(subjects.ALL_TASK_EVENTS, cb=self.queue.put))
            return
        for task_id in wanted if isinstance(wanted, list) else [wanted]:
            if not self.everything and task_id not in self.relays and subjects.is_valid_task_id(task_id):
                self.subs += await _subscribe(self.tasks.nc, task_id, self.queue)
            await self.follow(str(task_id))

    async def follow(self, task_id: str, accepted: TaskRecord | None = None) -> None:
        """Start relaying a task: one asked for, or (`accepted`) one just accepted, with no progress yet."""
        if task_id in self.relays:
            return
        record = accepted
        if record is None:
            try:
                record = await self.tasks.get(task_id, self.principal)
            except ApiError as e:
                await self.socket.send_json({"event": "error", "task_id": task_id, "data": {"detail": e.detail}})
                return
        relay = self.relays[task_id] = Relay(record, self.view, previews=self.previews)
        await self.send(task_id, relay.start(None if accepted else await self.tasks.last_progress(task_id)))

    async def send(self, task_id: str, outs: list[Out]) -> None:
        for out in outs:
            data = out.data
            if self.images and out.name == TaskStatus.COMPLETED.value:  # the images themselves, base64
                stored = await asyncio.gather(*(self.tasks.storage.get(image.key)
                                                for image in self.relays[task_id].record.images))
                data = {**data, "images": [base64.b64encode(b or b"").decode() for b in stored]}
            await self.socket.send_json({"event": out.name, "task_id": task_id, "id": out.id, "data": data})

    async def on_nats(self, msg) -> None:
        task_id = msg.subject.split(".")[1]
        relay = self.relays.get(task_id)
        if relay is None and self.everything and msg.subject == subjects.task_event(task_id, Accepted.name()):
            event = decode_event(msg.data)
            if isinstance(event, Accepted) and self.principal.may_see(event.owner):
                await self.follow(task_id, fold.apply(None, event))
            return
        if relay is not None and not relay.done:
            await self.send(task_id, relay.on_nats(msg))
            if relay.done and self.everything:  # a connection watching everything would keep them all
                del self.relays[task_id]

    async def pump(self) -> None:
        while True:
            msg = await self.queue.get()
            try:
                await self.on_nats(msg)
            except (ConnectionResetError, RuntimeError):
                return


async def websocket(request: web.Request, principal, view: Callable[[TaskRecord], dict]) -> web.WebSocketResponse:
    """GET …/ws: a WatchSession over a WebSocket."""
    ws = web.WebSocketResponse(heartbeat=KEEPALIVE_S)
    await ws.prepare(request)
    async with WatchSession(ws, request.app[CTX].tasks, principal, view) as session:
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                await session.command(frame.data)
    return ws
