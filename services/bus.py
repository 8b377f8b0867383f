"""NATS connection, idempotent creation of streams and buckets, and event publishing."""

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from schemas import subjects
from schemas.codec import encode
from schemas.events import TaskEvent

from .config import Config, NatsConfig
from .observability import telemetry

log = logging.getLogger("diffbus.bus")

WRONG_LAST_SEQUENCE = 10071  # JetStream error: an expected last (subject) sequence did not match
STREAM_IN_USE = 10058  # JetStream error: stream name already in use with a different configuration
PUBLISH_RETRY_S = 20.0  # a publish is retried this long while its stream elects a new leader
PUBLISH_ACK_S = 2.0  # per try: a publish that reached no stream leader is not stored, so try again soon
ENSURE_TIMEOUT_S = 60.0  # a cluster starting with its services may need this long to elect a leader


def worker_id(kind: str) -> str:
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"


async def _log_error(e: Exception) -> None:
    log.warning("nats: %s", e)


async def _log_disconnected() -> None:
    log.warning("nats: disconnected; reconnecting")


def connect_options(ncfg: NatsConfig) -> dict:
    """nats.connect keyword arguments for the configured servers and credentials."""
    options: dict = {}
    if ncfg.user is not None:
        options.update(user=ncfg.user, password=ncfg.password)
    if ncfg.token is not None:
        options["token"] = ncfg.token
    if ncfg.creds is not None:
        options["user_credentials"] = ncfg.creds
    if ncfg.tls_ca is not None or ncfg.tls_cert is not None:
        tls = ssl.create_default_context(cafile=ncfg.tls_ca)
        if ncfg.tls_cert is not None:
            tls.load_cert_chain(ncfg.tls_cert, ncfg.tls_key)
        options["tls"] = tls
    return options


class Connection(Client):
    """A NATS connection that makes again, after each reconnect, what its service needs: a restarted
    nats-server has lost its memory-storage streams and buckets (PROGRESS, the workers bucket) and
    what was made on them (watches, ephemeral consumers). Every stream and bucket is ensured, then
    the steps the service added with `after_reconnect`, in order."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.restore_steps: list[tuple[str, Callable[[], Awaitable]]] = []
        self.restoring: asyncio.Task | None = None

    def after_reconnect(self, what: str, step: Callable[[], Awaitable]) -> None:
        """Run `step` (retried while JetStream is not ready) after every reconnect, once the streams
        and buckets are back."""
        self.restore_steps.append((what, step))

    async def reconnected(self) -> None:
        log.info("nats: reconnected to %s", self.connected_url.netloc if self.connected_url else "?")
        if self.restoring is not None:
            self.restoring.cancel()  # lost again while restoring: start over on this server
        self.restoring = asyncio.create_task(self.restore())

    async def restore(self) -> None:
        try:
            js = self.jetstream()
            await ensure(js, self.config)
            for what, step in self.restore_steps:
                await retry(step, what)
            log.info("nats: streams, buckets%s in place", "".join(f", {what}" for what, _ in self.restore_steps))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the next reconnect tries again
            log.error("nats: could not restore what this service needs: %r", e)


async def connect(config: Config, name: str) -> Connection:
    """Connect to any of the configured servers; on losing it, reconnect to another, forever, and
    make again what the service needs (see Connection)."""
    client = Connection(config)
    await client.connect(
        config.nats.urls,
        name=name,
        error_cb=_log_error,
        disconnected_cb=_log_disconnected,
        reconnected_cb=client.reconnected,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        drain_timeout=10,
        **connect_options(config.nats),
    )
    return client


@contextlib.asynccontextmanager
async def serving(config: Config, name: str) -> AsyncIterator[Connection]:
    """A service's connection (see connect) with every stream and bucket ensured; drained on leaving,
    so what it has in flight settles. Every service enters it first in its AsyncExitStack."""
    nc = await connect(config, name)
    try:
        await ensure(nc.jetstream(), config)
        yield nc
    finally:
        await nc.drain()


def stream_config(spec: subjects.StreamSpec, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType(spec.storage),
        max_age=spec.max_age_s,
        max_msgs_per_subject=spec.max_msgs_per_subject or -1,
        duplicate_window=spec.duplicate_window_s,
        num_replicas=replicas,
    )


async def ensure(js: JetStreamContext, config: Config) -> None:
    """Create (or bring up to date) every stream and bucket. Safe to call from every service; waits
    while JetStream is unavailable (a cluster still electing its leader)."""
    await retry(lambda: _ensure(js, config), "streams and buckets")


async def retry(operation, what: str, within: float = ENSURE_TIMEOUT_S):
    """Await `operation()` until it succeeds, retrying while JetStream is briefly unavailable (a
    cluster electing a leader, a node lost): for start-up steps such as creating consumers."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await operation()
        except TRANSIENT as e:
            if time.monotonic() > deadline:
                raise
            log.info("%s: JetStream not ready (%s); retrying", what, type(e).__name__)
            await asyncio.sleep(1.0)


async def _ensure(js: JetStreamContext, config: Config) -> None:
    replicas = config.nats.replicas
    for spec in subjects.streams(config.retention.days):
        cfg = stream_config(spec, replicas)
        try:
            await js.add_stream(cfg)
        except BadRequestError as e:
            if e.err_code != STREAM_IN_USE:
                raise
            await js.update_stream(cfg)
    if config.storage.backend == "nats":
        await js.create_object_store(subjects.IMAGES_BUCKET, ObjectStoreConfig(
            storage=StorageType.FILE, replicas=replicas))
    await js.create_key_value(KeyValueConfig(bucket=subjects.CANCEL_BUCKET, ttl=7 * 86400, replicas=replicas))
    await js.create_key_value(KeyValueConfig(bucket=subjects.DIALECT_STATE_BUCKET, replicas=replicas))
    await js.create_key_value(KeyValueConfig(
        bucket=subjects.WORKERS_BUCKET, ttl=max(3 * config.worker.announce_every_s, 5.0),
        storage=StorageType.MEMORY, replicas=replicas))


TRANSIENT = (TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError)


async def publish(js: JetStreamContext, subject: str, payload: bytes, headers: dict[str, str]):
    """js.publish, retried while the stream has no leader (a cluster node was lost) or the
    connection is being re-established. Safe because every publish here carries a Nats-Msg-Id:
    a retry of a message that was stored after all is answered as a duplicate, not stored twice."""
    deadline = time.monotonic() + PUBLISH_RETRY_S
    delay = 0.1
    while True:
        try:
            return await js.publish(subject, payload, timeout=PUBLISH_ACK_S, headers=headers)
        except TRANSIENT as e:
            if time.monotonic() + delay > deadline:
                raise
            log.info("publish to %s not acknowledged (%s); retrying", subject, type(e).__name__)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)


async def fetch(sub, batch: int, timeout: float) -> list:
    """A pull: the messages, or [] when none came in time or the consumer is briefly unavailable
    (a cluster node was lost and its leader is being re-elected: the next pull finds the new one)."""
    try:
        return await sub.fetch(batch, timeout=timeout)
    except TimeoutError:  # nats-py raises both its own and the builtin one
        return []
    except (nats.errors.NoRespondersError, ServiceUnavailableError, nats.errors.ConnectionReconnectingError) as e:
        log.info("pull not answered (%s); trying again", type(e).__name__)
        await asyncio.sleep(min(timeout, 0.5))
        return []


async def publish_event(js: JetStreamContext, event: TaskEvent, *qualifiers: object, expect_new: bool = False):
    """Publish a task event on `tasks.<id>.<event>`; terminal events share one message id, so a
    task's first terminal event is the only one stored. The current trace context goes along.
    `expect_new`: stored only if its subject holds no message yet (else APIError WRONG_LAST_SEQUENCE)."""
    name = event.name()
    headers = {"Nats-Msg-Id": subjects.event_msg_id(event.task_id, name, *qualifiers)}
    if expect_new:
        headers["Nats-Expected-Last-Subject-Sequence"] = "0"
    return await publish(js, subjects.task_event(event.task_id, name), encode(event),
                         headers=telemetry.headers(headers))


async def keep_alive(msg, ack_wait_s: float) -> None:
    """Heartbeat a message being worked on (`in_progress`, three times per ack wait) until cancelled,
    so JetStream does not redeliver it meanwhile."""
    while True:
        await asyncio.sleep(ack_wait_s / 3)
        try:
            await msg.in_progress()
        except Exception as e:  # noqa: BLE001 - a missed heartbeat only risks a redelivery
            log.warning("heartbeat failed: %s", e)


async def last_event_msg(js: JetStreamContext, task_id: str, event: str):
    """The stored message of a task's last `event` (payload and stream sequence), from the TASKS stream."""
    try:
        return await js.get_last_msg(subjects.TASKS, subjects.task_event(task_id, event))
    except NotFoundError:
        return None


async def last_event(js: JetStreamContext, task_id: str, event: str) -> bytes | None:
    """The stored payload of a task's last `event`, straight from the TASKS stream."""
    msg = await last_event_msg(js, task_id, event)
    return None if msg is None else msg.data


async def event_msgs(js: JetStreamContext, task_id: str, event: str, from_seq: int = 1):
    """The stored messages of a task's `event`, oldest first, from stream sequence `from_seq` on
    (a task's events start at its `accepted`, its number: a walk of a few requests)."""
    subject = subjects.task_event(task_id, event)
    while True:
        try:
            msg = await js.get_msg(subjects.TASKS, seq=from_seq, subject=subject, next=True)
        except NotFoundError:
            return
        yield msg
        from_seq = msg.seq + 1
