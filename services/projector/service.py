"""The projector: folds the TASKS stream into SQLite (rebuild, applier) and answers task queries over
NATS (queries)."""

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas import subjects
from services import bus, lifecycle, storage
from services.config import Config

from . import db, rebuilding
from .applier import MAX_POSITIONS, Applier, QueuePositions
from .db import TaskDB
from .queries import QueryServer
from .retention import Retention

log = logging.getLogger("diffbus.projector")


async def subscribe_events(js, applier: Applier):
    """Pushed, not pulled: no request per event, and one ack (AckPolicy.ALL) per applied batch."""
    return await bus.retry(lambda: js.subscribe(
        subjects.ALL_TASK_EVENTS, durable=subjects.PROJECTOR_DURABLE, stream=subjects.TASKS, cb=applier.on_event,
        manual_ack=True, flow_control=True, idle_heartbeat=5.0, config=ConsumerConfig(
            ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL, ack_wait=30, max_ack_pending=10_000)),
        "projector consumer")


async def finish_build(js, tasks: TaskDB, applier: Applier) -> None:
    """A database built from the stream is marked built once it holds what the stream held at the start."""
    head = (await js.stream_info(subjects.TASKS)).state.last_seq
    await applier.until(head)
    applier.apply()
    tasks.built()
    log.info("built from the TASKS stream up to sequence %d", head)


async def run(config: Config, rebuild: bool = False, clock=time.time) -> None:
    in_memory = config.projector.db == ":memory:"
    db_path = Path(db.MEMORY) if in_memory else config.data_path / config.projector.db
    async with contextlib.AsyncExitStack() as stack:
        nc = await stack.enter_async_context(bus.serving(config, "projector"))
        js = nc.jetstream()
        await rebuilding.prepare(js, db_path, asked=rebuild or in_memory)
        tasks = TaskDB(db_path, config.projector.cache_mb)
        stack.callback(tasks.close)
        queue = QueuePositions(nc)
        stack.callback(queue.cancel)
        applier = Applier(tasks, queue)
        queries = QueryServer(nc, tasks, applier)
        await queue.publish_changes(tasks.queue_positions(MAX_POSITIONS))
        await queries.start()
        stack.push_async_callback(queries.stop)
        stack.callback(applier.apply)
        if tasks.building:
            stack.callback(asyncio.create_task(finish_build(js, tasks, applier)).cancel)
        events = await subscribe_events(js, applier)
        stack.push_async_callback(events.unsubscribe)
        retention = Retention(config, js, await storage.open_storage(config, js), tasks, clock)
        stack.callback(asyncio.create_task(retention.run()).cancel)
        log.info("projector ready: %s", db_path)
        lifecycle.started()
        await lifecycle.stop_event().wait()
