"""The WebSocket watch session with a fake socket, against a real nats-server (no API server, no
projector: the task is read from the stream): what a browser watching tasks receives."""

import asyncio
import time

from schemas.events import ImageResult, Progress, TaskStatus
from schemas.jobs import Txt2Img
from services.api.auth import Principal
from services.api.live import WatchSession
from services.api.tasks import Tasks
from services.config import Config
from services.storage import ObjectStoreStorage
from services.task.events import TaskEvents

SPEC = Txt2Img(model="demo", prompt="x", width=64, height=64, steps=2, guidance_scale=7.5, seed=1)
IMAGE = ImageResult(key="results/t/0.png", content_type="image/png", width=64, height=64, seed=1)


class FakeSocket:
    def __init__(self):
        self.sent: list[dict] = []

    async def send_json(self, data: dict) -> None:
        self.sent.append(data)

    async def until(self, count: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.sent) < count:
            assert time.monotonic() < deadline, f"timed out; got {self.sent}"
            await asyncio.sleep(0.01)
        return self.sent


def view(record) -> dict:
    return {"status": record.status.value}


async def test_a_watched_task_sends_its_state_progress_once_each_then_its_end(bare_nc):
    config = Config()
    tasks = Tasks(config, bare_nc, ObjectStoreStorage(bare_nc.jetstream()))
    events = TaskEvents(bare_nc, "t1", worker="w1")
    await events.accepted("alice", SPEC)
    socket = FakeSocket()
    async with WatchSession(socket, tasks, Principal("alice"), view) as session:
        await session.command('{"subscribe": "nonsense-without-list"}')
        await session.command("not json")
        await session.command('{"subscribe": ["t1", "someone-elses"], "previews": false}')
        sent = await socket.until(3)
        assert sent[0]["event"] == "error" and sent[0]["task_id"] == "nonsense-without-list"
        assert sent[1] == {"event": "error", "data": {"detail": 'expected {"subscribe": [...]}'}}
        assert sent[2] == {"event": "state", "task_id": "t1", "id": None, "data": {"status": "pending"}}
        progress = Progress(task_id="t1", at=time.time(), status=TaskStatus.PROCESSING, step=1, total_steps=2,
                            attempt=1, preview="abc", preview_format="webp")
        await events.progress(progress)
        await events.progress(progress)  # a repeat is not news
        await events.completed([IMAGE], 0.5)
        sent = await socket.until(7)
        assert [(m["event"], m.get("task_id")) for m in sent[3:]] == [
            ("error", "someone-elses"), ("state", "t1"), ("progress", "t1"), ("completed", "t1")]
        assert sent[4]["data"] == {"status": "processing"}  # its `started` came before we listened
        assert sent[5]["data"]["step"] == 1 and "preview" not in sent[5]["data"]
        assert sent[6] == {"event": "completed", "task_id": "t1", "id": "done", "data": {"status": "completed"}}


async def test_watching_all_follows_new_tasks_of_this_owner_only(bare_nc):
    tasks = Tasks(Config(), bare_nc, ObjectStoreStorage(bare_nc.jetstream()))
    socket = FakeSocket()
    async with WatchSession(socket, tasks, Principal("alice"), view) as session:
        await session.command('{"subscribe": "all"}')
        await bare_nc.flush()
        await TaskEvents(bare_nc, "bobs").accepted("bob", SPEC)
        await TaskEvents(bare_nc, "alices").accepted("alice", SPEC)
        await TaskEvents(bare_nc, "alices").cancelled()
        sent = await socket.until(2)
        assert [(m["event"], m["task_id"]) for m in sent] == [("state", "alices"), ("cancelled", "alices")]
        assert not session.relays  # a finished task is let go
