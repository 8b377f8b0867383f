"""Per-key quotas: how many tasks a key may have waiting and running, and how many submits a minute.

A submit over a limit is refused with 429 and Retry-After (in the dialect's own error shape, by the
error middleware) before anything is published. Waiting and running tasks are counted by the projector
(`query.tasks.list`, answered after it has applied every event the stream held), so every API replica
sees the same counts; submits in flight in this replica are added until their `accepted` is stored.
A count read from the projector serves the key's submits for COUNT_TTL_S, plus what this replica
accepted since (so a burst costs one query, not one per submit); other replicas' submits in that
second can overshoot a limit by as many. Submits a minute are counted by each replica. Admin keys
have no quota."""

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable

from schemas.events import TaskStatus
from services.config import Config, Quota
from services.observability import metrics

from .auth import Principal
from .errors import ApiError

log = logging.getLogger("diffbus.api.quotas")

RATE_WINDOW_S = 60.0
COUNT_TTL_S = 1.0  # a key's waiting and running counts from the projector serve this long

# owner, status -> how many of the owner's tasks have that status (raises ApiError when unknown)
Counter = Callable[[str, TaskStatus], Awaitable[int]]


def quota_table(config: Config) -> dict[str, Quota | None]:
    """owner -> its quota (None: exempt) for every configured key."""
    return {k.owner: None if k.admin else k.quota.over(config.quotas) for k in config.api_keys}


class Quotas:
    def __init__(self, config: Config, count: Counter, clock: Callable[[], float] = time.monotonic):
        self.defaults = config.quotas
        self.by_owner = quota_table(config)
        self.count = count
        self.clock = clock
        self.recent: dict[str, deque[float]] = defaultdict(deque)  # owner -> times of accepted submits
        self.in_flight: dict[str, int] = defaultdict(int)  # owner -> submits between check and publish
        self.counts: dict[tuple[str, TaskStatus], tuple[float, asyncio.Future]] = {}  # -> (asked at, count)

    def of(self, principal: Principal) -> Quota | None:
        if principal.admin:
            return None
        return self.by_owner.get(principal.owner, self.defaults)

    async def check(self, principal: Principal) -> None:
        """Before a submit publishes: ApiError 429 with Retry-After when one of the key's limits is reached."""
        if (quota := self.of(principal)) is not None:
            self._check_rate(principal.owner, quota)
            await self._check_tasks(principal.owner, quota)

    @contextlib.contextmanager
    def submitting(self, principal: Principal):
        """Around the publishing that follows `check` (entered with no await between): the submit counts
        as waiting until its `accepted` is stored, and once published against the rate."""
        owner = principal.owner
        self.in_flight[owner] += 1
        try:
            yield
            self.recent[owner].append(self.clock())
            self._forget_before(owner, self.clock() - RATE_WINDOW_S)
        finally:
            self.in_flight[owner] -= 1

    def _forget_before(self, owner: str, since: float) -> None:
        recent = self.recent[owner]
        while recent and recent[0] <= since:
            recent.popleft()

    async def _cached_count(self, owner: str, status: TaskStatus) -> int:
        """The projector's count, at most COUNT_TTL_S old, plus (waiting) what was accepted here since."""
        now = self.clock()
        at, count = self.counts.get((owner, status), (-math.inf, None))
        if count is None or now - at > COUNT_TTL_S or (count.done() and count.exception()):
            at, count = now, asyncio.ensure_future(self.count(owner, status))  # shared by concurrent submits
            self.counts[(owner, status)] = (at, count)
        seen = await asyncio.shield(count)
        return seen + sum(t >= at for t in self.recent[owner]) if status is TaskStatus.PENDING else seen

    def _check_rate(self, owner: str, quota: Quota) -> None:
        if quota.per_minute is None:
            return
        recent, now = self.recent[owner], self.clock()
        self._forget_before(owner, now - RATE_WINDOW_S)
        if len(recent) >= quota.per_minute:
            wait = recent[0] + RATE_WINDOW_S - now if recent else RATE_WINDOW_S
            self._refuse(owner, "per_minute", f"at most {quota.per_minute} submits a minute", wait)

    async def _check_tasks(self, owner: str, quota: Quota) -> None:
        limits = [(limit, status, what) for limit, status, what in (
            (quota.max_queued, TaskStatus.PENDING, "max_queued"),
            (quota.max_running, TaskStatus.PROCESSING, "max_running")) if limit is not None]
        if not limits:
            return
        try:
            counts = await asyncio.gather(*(self._cached_count(owner, status) for _, status, _ in limits))
        except ApiError as e:  # the projector is down: the service goes on, unmetered
            log.warning("quota of %s not checked: %s", owner, e.detail)
            return
        for (limit, status, what), count in zip(limits, counts):
            if status is TaskStatus.PENDING:
                count += self.in_flight[owner]
            if count >= limit:
                words = "waiting" if status is TaskStatus.PENDING else "running"
                self._refuse(owner, what, f"{count} of this key's tasks are {words} (at most {limit})",
                             self.defaults.retry_after_s)

    @staticmethod
    def _refuse(owner: str, limit: str, why: str, retry_after_s: float) -> None:
        metrics.KEY_REFUSED.labels(owner, limit).inc()
        raise ApiError(429, f"Quota reached: {why}; retry later",
                       headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})

    async def refresh_metrics(self, extra_owners: list[str] = ()) -> None:
        """Per-key waiting and running gauges of every configured key, from the projector, at scrape time."""
        for owner in dict.fromkeys([*self.by_owner, *extra_owners]):
            try:
                queued, running = await asyncio.gather(self.count(owner, TaskStatus.PENDING),
                                                       self.count(owner, TaskStatus.PROCESSING))
            except ApiError:
                return
            metrics.KEY_QUEUED.labels(owner).set(queued)
            metrics.KEY_RUNNING.labels(owner).set(running)
