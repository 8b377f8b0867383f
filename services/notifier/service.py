"""notifier: turns task events into signed webhooks. It consumes the TASKS stream with a durable
consumer shared by every notifier, so a crash loses nothing and no two notifiers send the same event;
retries are JetStream redeliveries (nak with delay), so their state lives in the stream too."""

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

import aiohttp
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from standardwebhooks.webhooks import Webhook

from schemas import subjects
from schemas.codec import decode, decode_event
from schemas.events import Accepted, Progress, Started, TaskStatus, WebhookDelivered, WebhookEvent
from services import bus, egress, lifecycle, storage
from services.config import Config, ConfigError
from services.lifecycle import stop_event
from services.observability import metrics, telemetry
from services.task.events import TaskEvents

from . import backoff, payloads
from .delivery import Attempt, post

log = logging.getLogger("diffbus.notifier")

ACCEPTED_CACHE = 10_000
MIN_ACK_WAIT_S = 1.0  # a delivery in hand is heartbeated every third of the consumer's ack wait


def redelivery_wait(schedule: list[float]) -> float:
    """The consumer's ack wait: how long a delivery cut off by a crash waits to be tried again. The
    retry schedule's shortest step (so never longer than its next step), at least MIN_ACK_WAIT_S;
    deliveries in hand, waiting for a slot or being posted, are heartbeated meanwhile."""
    return max(MIN_ACK_WAIT_S, min(schedule, default=MIN_ACK_WAIT_S))


def signers(config: Config) -> tuple[Webhook, dict[str, Webhook]]:
    """The default signer and one per owner whose key has its own secret."""
    secret = config.notifier.secret
    path = config.webhook_secret_file
    if secret is None and path.exists():
        secret = path.read_text().strip()
    if not secret:
        raise ConfigError("no webhook secret: set notifier.secret (whsec_…) in config.yaml "
                          "(`diffbus up` creates one in data/webhook-secret when none is configured)")
    try:
        return Webhook(secret), {k.owner: Webhook(k.webhook_secret) for k in config.api_keys if k.webhook_secret}
    except Exception as e:  # noqa: BLE001 - standardwebhooks raises plain errors on bad secrets
        raise ConfigError(f"bad webhook secret: {e}") from None


def wants(accepted: Accepted | None, about: WebhookEvent) -> bool:
    """Whether the task (its `accepted`) asked for webhooks about this."""
    return accepted is not None and bool(accepted.callback_url) and about in accepted.webhook_events


class Notifier:
    def __init__(self, config: Config, nc, store: storage.Storage | None = None):
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.signer, self.owner_signers = signers(config)
        self.allowed = egress.networks(config.notifier.allowed_networks)
        self.base_url = config.public_base_url
        self.storage = store or storage.ObjectStoreStorage(self.js)
        self.slots = asyncio.Semaphore(config.notifier.max_in_flight)
        # task_id -> its `accepted` and its number (the stream sequence of `accepted`, see task.fold)
        self.accepted: OrderedDict[str, tuple[Accepted | None, int | None]] = OrderedDict()
        self.progress_sent: dict[str, float] = {}
        self.tasks: set[asyncio.Task] = set()
        self.in_hand: set[int] = set()  # stream sequences of the events being handled here
        self.ack_wait = redelivery_wait(config.notifier.retry_schedule_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`; what is opened here is closed in reverse order by the stack: the
        subscriptions first, then the deliveries under way are let finish, then the HTTP session."""
        ncfg = self.config.notifier
        async with contextlib.AsyncExitStack() as stack:
            connector = aiohttp.TCPConnector(resolver=egress.GuardedResolver(self.allowed),
                                             limit=ncfg.max_in_flight)
            self.session = await stack.enter_async_context(aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=ncfg.timeout_s)))
            stack.push_async_callback(self._finish_deliveries)
            start = await bus.retry(self._start_from, "notifier consumer")
            # Pushed to every notifier of the group: no request per event. `accepted` comes first, so a
            # task's webhook settings are known without a lookup.
            events = await bus.retry(lambda: self.js.subscribe(
                "", queue=subjects.NOTIFIER_DURABLE, durable=subjects.NOTIFIER_DURABLE, stream=subjects.TASKS,
                cb=self._on_event, manual_ack=True, flow_control=True, idle_heartbeat=5.0, config=ConsumerConfig(
                    filter_subjects=[subjects.task_event("*", Accepted.name()), *subjects.webhook_triggers()],
                    ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait, max_deliver=-1,
                    max_ack_pending=10 * ncfg.max_in_flight, **start)), "notifier consumer")
            stack.push_async_callback(events.unsubscribe)
            progress = await self.nc.subscribe(subjects.progress("*"), queue=subjects.NOTIFIER_QUEUE,
                                               cb=self._on_progress)
            stack.push_async_callback(progress.unsubscribe)
            log.info("notifier ready")
            lifecycle.started()
            await stop.wait()

    async def _finish_deliveries(self) -> None:
        """Let deliveries under way finish (for notifier.timeout_s); what is cut off is redelivered later."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.config.notifier.timeout_s)
        for task in list(self.tasks):
            task.cancel()

    async def _start_from(self) -> dict:
        """Where a new consumer starts: the whole stream, or, replacing the pulled consumer of an older
        notifier, just after what it acknowledged (what it had in flight comes again)."""
        try:
            info = await self.js.consumer_info(subjects.TASKS, subjects.NOTIFIER_DURABLE)
        except NotFoundError:
            return {"deliver_policy": DeliverPolicy.ALL}
        if info.config.deliver_subject:  # ours already: it goes on where it is
            if info.config.ack_wait != self.ack_wait:
                await self.js.add_consumer(subjects.TASKS, info.config.evolve(ack_wait=self.ack_wait))
            return {}
        await self.js.delete_consumer(subjects.TASKS, subjects.NOTIFIER_DURABLE)
        log.info("notifier consumer now pushed, from stream sequence %d", info.ack_floor.stream_seq + 1)
        return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": info.ack_floor.stream_seq + 1}

    async def _on_event(self, msg) -> None:
        """Events one at a time, in stream order: `accepted` is remembered; others are handled each in a
        task of its own, heartbeated until settled, that waits for a slot (JetStream stops delivering
        at max_ack_pending)."""
        try:
            event = decode_event(msg.data)
        except Exception as e:  # noqa: BLE001 - an event we cannot read can never be delivered
            log.error("dropping undecodable event at %s: %s", msg.subject, e)
            await msg.term()
            return
        if isinstance(event, Accepted):
            self._remember(event.task_id, (event, msg.metadata.sequence.stream))
            await msg.ack()
            return
        known = self.accepted.get(event.task_id)
        if known is not None and not wants(known[0], payloads.about(event)):  # most tasks: no webhook
            await msg.ack()
            return
        seq = msg.metadata.sequence.stream
        if seq in self.in_hand:  # redelivered while still handled here (a heartbeat came late)
            return
        self.in_hand.add(seq)
        self._spawn(self._handle(msg, event))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception():
            log.error("webhook delivery crashed", exc_info=task.exception())

    def _remember(self, task_id: str, accepted: tuple[Accepted | None, int | None]) -> None:
        self.accepted[task_id] = accepted
        if len(self.accepted) > ACCEPTED_CACHE:
            self.accepted.popitem(last=False)

    async def _accepted(self, task_id: str) -> tuple[Accepted | None, int | None]:
        """A task's `accepted` and number: seen on the consumer, else (another notifier of the group
        got it, or it was forgotten) read from the stream."""
        if task_id not in self.accepted:
            msg = await bus.last_event_msg(self.js, task_id, Accepted.name())
            self._remember(task_id, (None, None) if msg is None else (decode(msg.data, Accepted), msg.seq))
        return self.accepted[task_id]

    def file_url(self, key: str) -> str:
        return self.storage.url(key, self.base_url)

    async def _handle(self, msg, event) -> None:
        heartbeat = asyncio.create_task(bus.keep_alive(msg, self.ack_wait))
        try:
            async with self.slots:
                await self._handle_in_slot(msg, event)
        finally:
            heartbeat.cancel()
            self.in_hand.discard(msg.metadata.sequence.stream)

    async def _handle_in_slot(self, msg, event) -> None:
        """Deliver the event's webhook (traced), or ack at once when its task wants none or a receiver
        already answered it with a 2xx (an earlier attempt whose ack was lost with its notifier)."""
        about = payloads.about(event)
        accepted, number = await self._accepted(event.task_id)
        if not wants(accepted, about):
            await msg.ack()
            return
        if await self._delivered(event.task_id, about, number):
            log.info("%s webhook of task %s was delivered before; not sending it again", about.value, event.task_id)
            await msg.ack()
            return
        with telemetry.consuming("webhook.deliver", [msg.headers], subject=msg.subject):
            await self._deliver(msg, event, about, accepted, number)

    async def _delivered(self, task_id: str, about: WebhookEvent, number: int) -> bool:
        async for stored in bus.event_msgs(self.js, task_id, WebhookDelivered.name(), number):
            if decode(stored.data, WebhookDelivered).about == about:
                return True
        return False

    async def _deliver(self, msg, event, about: WebhookEvent, accepted: Accepted, number: int | None) -> None:
        started_at = event.at if isinstance(event, Started) else await self._started_at(event.task_id)
        body = payloads.render(accepted, event, self.file_url, started_at, number)
        webhook_id = f"msg_{event.task_id}_{about.value}"
        attempt_no = msg.metadata.num_delivered
        attempt = await self._post(accepted, webhook_id, body)
        events = TaskEvents(self.nc, event.task_id, js=self.js)
        await events.webhook_attempt(about, webhook_id, attempt_no, status_code=attempt.status,
                                     latency_ms=attempt.latency_ms, error=attempt.error)
        result = backoff.outcome(attempt.status)
        if result is backoff.Outcome.DELIVERED:
            await events.webhook_delivered(about, webhook_id, attempt_no)
            await msg.ack()
            return
        terminal = about not in (WebhookEvent.STARTED, WebhookEvent.PROGRESS)
        delay = None
        if result is backoff.Outcome.RETRY and terminal and not attempt.blocked:
            delay = backoff.retry_delay(attempt_no, self.config.notifier.retry_schedule_s, attempt.retry_after_s)
        if delay is not None:
            events.webhook_retry(about, delay)
            await msg.nak(delay=delay)
            return
        await events.webhook_failed(about, webhook_id, attempt_no, attempt.error or f"HTTP {attempt.status}")
        await msg.term()

    async def _post(self, accepted: Accepted, webhook_id: str, body: dict) -> Attempt:
        signer = self.owner_signers.get(accepted.owner, self.signer)
        return await post(self.session, signer, accepted.callback_url, webhook_id, body, self.allowed)

    async def _started_at(self, task_id: str) -> float | None:
        data = await bus.last_event(self.js, task_id, Started.name())
        return None if data is None else decode(data, Started).at

    async def _on_progress(self, msg) -> None:
        """Progress webhooks: sent once, at most every progress_min_interval_s per task, never retried."""
        progress = decode(msg.data, Progress)
        if progress.status is not TaskStatus.PROCESSING:
            return
        now = time.monotonic()
        if now - self.progress_sent.get(progress.task_id, -1e9) < self.config.notifier.progress_min_interval_s:
            return
        accepted, number = await self._accepted(progress.task_id)
        if not wants(accepted, WebhookEvent.PROGRESS):
            return
        self.progress_sent[progress.task_id] = now
        if len(self.progress_sent) > ACCEPTED_CACHE:
            self.progress_sent.pop(next(iter(self.progress_sent)))
        if self.slots.locked():
            return  # busy with terminal events: a progress update may be dropped, a result may not
        webhook_id = f"msg_{progress.task_id}_progress_{progress.tick}"
        self._spawn(self._post_progress(accepted, webhook_id, payloads.render(accepted, progress, self.file_url,
                                                                                  number=number)))

    async def _post_progress(self, accepted: Accepted, webhook_id: str, body: dict) -> None:
        async with self.slots:
            attempt = await self._post(accepted, webhook_id, body)
        delivered = backoff.outcome(attempt.status) is backoff.Outcome.DELIVERED
        metrics.WEBHOOK_ATTEMPTS.labels("delivered" if delivered else "failed").inc()


async def run(config: Config) -> None:
    async with bus.serving(config, "notifier") as nc:
        store = await storage.open_storage(config, nc.jetstream())
        await Notifier(config, nc, store).run(stop_event())
