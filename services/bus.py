"""NATS connection, idempotent creation of streams and buckets, and event publishing."""

import logging
import os
import socket

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from schemas import subjects
from schemas.codec import encode
from schemas.events import TaskEvent

from .config import Config

log = logging.getLogger("diffbus.bus")

STREAM_IN_USE = 10058  # JetStream error: stream name already in use with a different configuration


def worker_id(kind: str) -> str:
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"


async def _log_error(e: Exception) -> None:
    log.warning("nats: %s", e)


async def connect(config: Config, name: str) -> Client:
    return await nats.connect(
        config.nats.url,
        name=name,
        error_cb=_log_error,
        max_reconnect_attempts=-1,
        drain_timeout=10,
    )


def stream_config(spec: subjects.StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType(spec.storage),
        max_age=spec.max_age_s,
        max_msgs_per_subject=spec.max_msgs_per_subject or -1,
        duplicate_window=spec.duplicate_window_s,
    )


async def ensure(js: JetStreamContext, config: Config) -> None:
    """Create (or bring up to date) every stream and bucket. Safe to call from every service."""
    for spec in subjects.streams(config.tasks_max_age_days):
        cfg = stream_config(spec)
        try:
            await js.add_stream(cfg)
        except BadRequestError as e:
            if e.err_code != STREAM_IN_USE:
                raise
            await js.update_stream(cfg)
    await js.create_object_store(subjects.IMAGES_BUCKET, ObjectStoreConfig(storage=StorageType.FILE))
    await js.create_key_value(KeyValueConfig(bucket=subjects.CANCEL_BUCKET, ttl=7 * 86400))
    await js.create_key_value(KeyValueConfig(bucket=subjects.DIALECT_STATE_BUCKET))
    await js.create_key_value(KeyValueConfig(
        bucket=subjects.WORKERS_BUCKET, ttl=max(3 * config.worker.announce_every_s, 5.0),
        storage=StorageType.MEMORY))


async def publish_event(js: JetStreamContext, event: TaskEvent, *qualifiers: object):
    """Publish a task event on `tasks.<id>.<event>`; terminal events share one message id, so a
    task's first terminal event is the only one stored."""
    name = event.name()
    return await js.publish(
        subjects.task_event(event.task_id, name),
        encode(event),
        headers={"Nats-Msg-Id": subjects.event_msg_id(event.task_id, name, *qualifiers)},
    )


async def last_event(js: JetStreamContext, task_id: str, event: str) -> bytes | None:
    """The stored payload of a task's last `event`, straight from the TASKS stream."""
    try:
        msg = await js.get_last_msg(subjects.TASKS, subjects.task_event(task_id, event))
    except NotFoundError:
        return None
    return msg.data
