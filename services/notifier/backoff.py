"""When to try a webhook again: the configured schedule with jitter, never sooner than Retry-After."""

import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from enum import Enum

MAX_RETRY_AFTER_S = 3600.0


class Outcome(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # network error, timeout, 429, 5xx
    GONE = "gone"  # 410: the receiver wants no more
    REJECTED = "rejected"  # other 4xx (and 3xx): retrying would not help


def outcome(status: int | None) -> Outcome:
    if status is None or status == 429 or status >= 500:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.DELIVERED
    return Outcome.GONE if status == 410 else Outcome.REJECTED


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped at an hour."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def retry_delay(attempt: int, schedule: list[float], retry_after: float | None = None,
                rng: Callable[[], float] = random.random) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1-based); None once the schedule is spent."""
    if attempt > len(schedule):
        return None
    jittered = schedule[attempt - 1] * (0.8 + 0.4 * rng())
    return max(jittered, retry_after or 0.0)
