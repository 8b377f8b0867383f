"""Fair sharing between API keys, on JetStream alone.

With `quotas.fair_sharing` on, the API queues a generation job on its key's own subject,
`jobs.generate.<priority>.<model>.<key>`, and each key has its own durable consumer there
(`gpu-<model>-<priority>-<key>`, made by the first worker that sees the key; JobStream's work queue
allows it: the filters do not overlap). A worker serves, within a priority, the keys that have jobs
waiting in turn by stride scheduling: each key has a pass that grows by 1/weight per job served, the key
with the lowest pass goes next, and a key that comes back from idle starts at the pass of the last key
served (no credit for the time it was away). A key flooding the queue only lengthens its own turn.

What a worker knows of who waits comes from what it already receives: the doorbell (a core
subscription on `jobs.generate.<priority>.<model>.*`, one message per job published, naming the key),
the pending count of the consumer it pulled from (exact, in each message's metadata), and, after an idle
spell, one STREAM.INFO filtered to the model and priority (messages per key). So a dispatch costs the
same one pull request as without fair sharing; the order is fair per worker (each keeps its own passes).
A pull for a key whose job was published lately waits (`worker.pull_after_ring_s`) for it to be stored.
"""

import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.js.api import ConsumerConfig

from schemas import subjects
from services import bus
from services.config import Config

log = logging.getLogger("diffbus.worker.fairshare")

KEY_CONSUMER_IDLE_S = 86400.0  # a key's consumer nobody pulled from for this long is removed by the server


def durable_group(durable: str) -> str:
    """The queue group of the workers handling one queue's max-deliveries advisories (one of them acts)."""
    return f"{durable}-keys"


def weights(config: Config) -> dict[str, float]:
    """key token -> weight, for every configured key (others weigh `quotas.weight`)."""
    return {subjects.key_token(k.owner): k.quota.over(config.quotas).weight for k in config.api_keys}


def pull_wait(rang_at: float, after_ring_s: float, short_s: float) -> float:
    """How long a pull waits: until a job whose doorbell rang at `rang_at` (monotonic; -inf: none) is
    stored, else `short_s`. On a cluster the doorbell beats the replicated store of the job."""
    return max(short_s, rang_at + after_ring_s - time.monotonic())


class FairQueue:
    """One model and priority's jobs, every key's, served in turn. Looks like a pull subscription to the
    job loop: fetch(batch, timeout) and unsubscribe(); `holds_more` says whether any key still waits."""

    def __init__(self, js, nc, subject: str, durable: str, consumer: ConsumerConfig, config: Config,
                 ring: Callable[[], None], on_max_deliveries: Callable[[object], Awaitable[None]],
                 short_s: float = 0.05):
        self.js, self.nc = js, nc
        self.subject, self.durable = subject, durable
        self.consumer = dataclasses.replace(consumer, inactive_threshold=KEY_CONSUMER_IDLE_S)
        self.weights, self.default_weight = weights(config), config.quotas.weight
        self.ring, self.on_max_deliveries = ring, on_max_deliveries
        self.waiting: dict[str, int] = {}  # key -> jobs believed to wait
        self.rang: dict[str, float] = {}  # key -> when a job of its was last published (monotonic)
        self.short_s, self.after_ring_s = short_s, config.worker.pull_after_ring_s
        self.passes: dict[str, float] = {}  # key -> its pass (stride scheduling)
        self.now = 0.0  # the pass of the key served last
        self.subs: dict[str, object] = {}  # key -> pull subscription on its consumer
        self.core: list = []

    async def start(self) -> "FairQueue":
        self.core = [await self.nc.subscribe(subjects.keyed(self.subject), cb=self._on_job),
                     await self.nc.subscribe(subjects.max_deliveries_advisory(subjects.JOBS), queue=durable_group(self.durable),
                                         cb=self._on_advisory)]
        await self.refresh()
        return self

    async def refresh(self) -> None:
        """Messages per key from the stream (those being worked on included: a pull corrects it)."""
        try:
            info = await self.js.stream_info(subjects.JOBS, subjects_filter=subjects.keyed(self.subject))
        except (nats.errors.Error, TimeoutError) as e:  # a busy or failing-over server: next idle poll
            log.info("job counts not read: %r", e)
            return
        for subject, count in (info.state.subjects or {}).items():
            self.waiting[subject.rsplit(".", 1)[1]] = count

    @property
    def holds_more(self) -> bool:
        return any(self.waiting.values())

    async def _on_job(self, msg) -> None:
        key = msg.subject.rsplit(".", 1)[1]
        self.waiting[key] = self.waiting.get(key, 0) + 1
        self.rang[key] = time.monotonic()
        self.ring()

    async def _on_advisory(self, msg) -> None:
        if msg.subject.rsplit(".", 1)[1].startswith(self.durable + "-"):
            await self.on_max_deliveries(msg)

    def turns(self) -> list[str]:
        """Keys with jobs waiting, the one to serve first first."""
        waiting = [key for key, count in self.waiting.items() if count > 0]
        for key in waiting:
            self.passes[key] = max(self.passes.get(key, self.now), self.now)
        return sorted(waiting, key=lambda key: (self.passes[key], key))

    def served(self, key: str, jobs: int) -> None:
        self.now = self.passes[key]
        self.passes[key] += jobs / self.weights.get(key, self.default_weight)

    async def fetch(self, batch: int, timeout: float) -> list:
        if not self.holds_more:  # redelivered jobs ring no bell: look at the stream
            await self.refresh()
        for key in self.turns():
            sub = await self._pull(key)
            wait = pull_wait(self.rang.get(key, -math.inf), self.after_ring_s, self.short_s)
            msgs = await bus.fetch(sub, batch, min(timeout, wait))
            if not msgs:  # taken by another worker, or the pull failed (a new consumer electing its leader)
                self.waiting[key] = await self._pending(sub)
                continue
            self.waiting[key] = msgs[-1].metadata.num_pending
            self.served(key, len(msgs))
            return msgs
        return []

    @staticmethod
    async def _pending(sub) -> int:
        """Jobs waiting on a key's consumer (0 when it cannot be asked)."""
        try:
            return (await sub.consumer_info()).num_pending or 0
        except (nats.errors.Error, TimeoutError):
            return 0

    async def _pull(self, key: str):
        if key not in self.subs:
            durable = subjects.key_durable(self.durable, key)
            self.subs[key] = await bus.retry(lambda: self.js.pull_subscribe(
                subjects.keyed(self.subject, key), durable=durable, stream=subjects.JOBS, config=self.consumer),
                f"consumer {durable}")
        return self.subs[key]

    async def unsubscribe(self) -> None:
        for sub in [*self.subs.values(), *self.core]:
            await sub.unsubscribe()
