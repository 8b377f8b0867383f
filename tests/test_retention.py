"""Retention: a task older than `retention.days` goes as a whole (listing, events, result and input
images), a younger one stays, and a projection rebuilt from the stream holds the same tasks. The
projector runs in this process on a clock the test moves; tasks are submitted by the API's own code and
completed with the event and stored image a worker would make."""

import asyncio
import contextlib
import io
import time

import nats
import nats.errors
import pytest
from nats.js.errors import NotFoundError
from PIL import Image

from schemas import subjects
from schemas.codec import decode, encode
from schemas.events import Completed, ImageResult
from schemas.jobs import Img2Img, Txt2Img
from schemas.queries import TaskList, TaskPage
from services import bus, storage
from services.api.auth import Principal
from services.api.inputs import InputImage
from services.api.tasks import Tasks
from services.cli.embedded import EmbeddedNats, free_port
from services.config import load
from services.projector import service as projector

ALICE = Principal("alice")
SPEC = {"model": "demo", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "guidance_scale": 7.0,
        "seed": 1}


def png(color: tuple) -> InputImage:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return InputImage(data=buf.getvalue(), width=8, height=8, extension="png")


async def completed(tasks: Tasks, spec) -> str:
    """A task submitted through the API's code, then completed as a worker completes one."""
    record = await tasks.submit(spec, ALICE, dialect="native")
    key = storage.result_key(record.task_id, 0, "png")
    await tasks.storage.put(key, png((1, 2, 3)).data)
    await bus.publish_event(tasks.js, Completed(task_id=record.task_id, at=time.time(), worker="w", elapsed_s=0.1,
                                                images=[ImageResult(key=key, content_type="image/png", width=64,
                                                                    height=64, seed=1)]))
    return record.task_id


async def listed(nc) -> set[str] | None:
    """alice's tasks as the projector lists them; None while no projector answers."""
    try:
        reply = await nc.request(subjects.TASK_LIST, encode(TaskList(owner="alice", limit=100)), timeout=5)
    except (nats.errors.NoRespondersError, TimeoutError):
        return None
    return {t.task_id for t in decode(reply.data, TaskPage).tasks}


async def eventually(check, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return result


@contextlib.asynccontextmanager
async def running_projector(config, nc, clock, rebuild: bool = False):
    task = asyncio.create_task(projector.run(config, rebuild, clock))
    try:
        await eventually(lambda: _answers(listed(nc)), "the projector to answer")
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def nats_server(tmp_path):
    with EmbeddedNats(f"nats://127.0.0.1:{free_port()}", tmp_path / "jetstream") as server:
        yield server


async def test_expired_tasks_leave_listing_stream_and_storage_and_a_rebuild_agrees(tmp_path, nats_server):
    config = load(None, environ={}, data_dir=str(tmp_path / "data"), nats={"url": nats_server.url},
                  retention={"days": 1, "sweep_every_s": 0.2})
    nc = await nats.connect(nats_server.url)
    await bus.ensure(nc.jetstream(), config)
    tasks = Tasks(config, nc)
    now = [time.time()]
    shared, own = await tasks.store_input(png((9, 9, 9))), await tasks.store_input(png((7, 7, 7)))
    try:
        async with running_projector(config, nc, lambda: now[0]):
            old = {await completed(tasks, Txt2Img(**SPEC)),
                   await completed(tasks, Img2Img(**SPEC, init_image=own, strength=0.5)),
                   await completed(tasks, Img2Img(**SPEC, init_image=shared, strength=0.5))}
            await asyncio.sleep(0.05)
            boundary = time.time()
            await asyncio.sleep(0.05)
            young = {await completed(tasks, Txt2Img(**SPEC)),
                     await completed(tasks, Img2Img(**SPEC, init_image=shared, strength=0.5))}
            assert await eventually(lambda: _equals(listed(nc), old | young), "every task listed")
            now[0] = boundary + 86400  # a day after the old tasks were made, less after the young ones
            await eventually(lambda: _equals(listed(nc), young), "the old tasks to expire")
        for task_id in old:
            assert not await tasks.storage.exists(storage.result_key(task_id, 0, "png"))
            with pytest.raises(NotFoundError):
                await tasks.js.get_last_msg(subjects.TASKS, subjects.task_event(task_id, "accepted"))
        for task_id in young:
            assert await tasks.storage.exists(storage.result_key(task_id, 0, "png"))
            assert await tasks.js.get_last_msg(subjects.TASKS, subjects.task_event(task_id, "completed"))
        assert not await tasks.storage.exists(own)  # only the expired task used it
        assert await tasks.storage.exists(shared)  # a young task uses it too
        async with running_projector(config, nc, lambda: now[0], rebuild=True):
            assert await eventually(lambda: _equals(listed(nc), young), "the rebuilt projection")
    finally:
        await nc.close()


async def test_retention_zero_keeps_everything_and_the_stream_has_no_max_age(tmp_path, nats_server):
    config = load(None, environ={}, data_dir=str(tmp_path / "data"), nats={"url": nats_server.url},
                  retention={"days": 0, "sweep_every_s": 0.2})
    nc = await nats.connect(nats_server.url)
    try:
        await bus.ensure(nc.jetstream(), config)
        assert (await nc.jetstream().stream_info(subjects.TASKS)).config.max_age in (None, 0)
        tasks = Tasks(config, nc)
        async with running_projector(config, nc, lambda: time.time() + 10 * 365 * 86400):
            task_id = await completed(tasks, Txt2Img(**SPEC))
            assert await eventually(lambda: _equals(listed(nc), {task_id}), "the task listed")
            await asyncio.sleep(0.5)  # sweeps came and went
            assert await listed(nc) == {task_id}
    finally:
        await nc.close()


async def _answers(listing) -> bool:
    return await listing is not None


async def _equals(listing, expected: set[str]) -> bool:
    return await listing == expected
