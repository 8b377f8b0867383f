"""What a worker knows of cancel requests: the cancel bucket's keys and `cancel_requested` events."""

import asyncio
import threading
from collections import OrderedDict

from schemas import subjects
from schemas.events import CancelRequested

from .. import bus

CANCELS_LOAD_S = 60.0  # how long the start may wait for the cancel bucket's contents


class Cancels:
    """The tasks asked to stop, known in the worker: the cancel bucket's keys, watched from its start
    (requests made while this worker was away count), and `cancel_requested` events as they happen. A
    job's cancel Event is set at once if its task was asked before, or when the request arrives."""

    ASKED = 100_000  # task ids remembered (the bucket forgets them after a week)

    def __init__(self):
        self.asked: OrderedDict[str, None] = OrderedDict()
        self.running: dict[str, list[threading.Event]] = {}

    async def start(self, nc, js) -> None:
        """Returns once every request already in the bucket is known."""
        kv = await js.key_value(subjects.CANCEL_BUCKET)
        self.watcher = await bus.retry(lambda: kv.watchall(ignore_deletes=True), "cancel watch")
        while (entry := await self.watcher.updates(timeout=CANCELS_LOAD_S)) is not None:
            self._asked(entry.key)
        self.pump = asyncio.create_task(self._pump())
        self.sub = await nc.subscribe(subjects.task_event("*", CancelRequested.name()),
                                      cb=self._on_event)

    async def _pump(self) -> None:
        async for entry in self.watcher:
            if entry is not None:
                self._asked(entry.key)

    async def _on_event(self, msg) -> None:
        self._asked(msg.subject.split(".")[1])

    def _asked(self, task_id: str) -> None:
        self.asked[task_id] = None
        if len(self.asked) > self.ASKED:
            self.asked.popitem(last=False)
        for event in self.running.get(task_id, ()):
            event.set()

    def watch(self, task_id: str) -> threading.Event:
        event = threading.Event()  # read by the work thread between steps
        self.running.setdefault(task_id, []).append(event)
        if task_id in self.asked:
            event.set()
        return event

    def unwatch(self, task_id: str, event: threading.Event) -> None:
        events = self.running.get(task_id, [])
        if event in events:
            events.remove(event)
        if not events:
            self.running.pop(task_id, None)

    async def stop(self) -> None:
        self.pump.cancel()
        await self.sub.unsubscribe()
        await self.watcher.stop()
