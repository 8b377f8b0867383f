"""What became of a job, and what that means for its message: the one place that maps outcomes to a
task event and to ack / nak(delay) / term, and decides which errors are worth another attempt.

A stage handler returns `Done(images)` (the task's last stage) or `HandedOn()` (the next stage is
queued), or raises `BadInput` (the job cannot be done as asked) or `Stopped` (between steps, on a
cancel or shutdown). Anything else it raises is classified here."""

import enum
from dataclasses import dataclass, field

from schemas.events import ImageResult


class Stopped(Exception):
    """Work stopped between steps because the task was cancelled or the worker is stopping."""


class BadInput(Exception):
    """The job cannot be done as asked (bad parameters, a missing input): fail now, do not retry."""


class PipelineError(Exception):
    """An error raised by the blocking work itself (the pipeline, the upscaler model), wrapped so
    classification can tell it from a lost connection while storing."""

    def __init__(self, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


@dataclass(frozen=True)
class Done:
    images: list[ImageResult]


@dataclass(frozen=True)
class HandedOn:
    """The task's next stage is queued; this job is finished."""


@dataclass(frozen=True)
class RetryAfter:
    delay_s: float
    reason: str


@dataclass(frozen=True)
class Rejected:
    reason: str


@dataclass(frozen=True)
class Cancelled:
    """The task was asked to stop: partial work is dropped."""


@dataclass(frozen=True)
class HandBack:
    """The worker is stopping: the job goes back to its queue at once, for another worker."""


Outcome = Done | HandedOn | RetryAfter | Rejected | Cancelled | HandBack


class Settle(enum.Enum):
    ACK = "ack"
    NAK = "nak"
    TERM = "term"


@dataclass(frozen=True)
class Decision:
    """The task event to publish (None: none) and how to settle the job's message afterwards."""

    settle: Settle
    event: str | None = None  # completed | failed | cancelled
    error: str | None = None  # for failed
    delay_s: float | None = None  # for nak
    images: list[ImageResult] = field(default_factory=list)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between attempts of a job that failed transiently (worker.retry_delay_s, doubled per
    attempt up to worker.retry_delay_max_s), and the attempts a job gets (worker.max_deliver)."""

    max_deliver: int = 3
    first_delay_s: float = 2.0
    max_delay_s: float = 60.0

    @classmethod
    def from_config(cls, worker) -> "RetryPolicy":
        return cls(worker.max_deliver, worker.retry_delay_s, worker.retry_delay_max_s)

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** (max(attempt, 1) - 1))


# Raised by a pipeline, these fail the same way on every worker: retrying only occupies more of them.
DETERMINISTIC = (TypeError, ValueError, RuntimeError, AttributeError, IndexError, KeyError, ZeroDivisionError,
                 AssertionError)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA (or MPS) out of memory: another worker, or this one later, may have room."""
    return type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def classify(error: BaseException, attempt: int, policy: RetryPolicy, cancelled: bool) -> Outcome:
    """The outcome of a job whose handler raised `error` on its `attempt`-th delivery."""
    if isinstance(error, Stopped):
        return Cancelled() if cancelled else HandBack()
    if isinstance(error, BadInput):
        return Rejected(str(error))
    if isinstance(error, PipelineError):
        if not is_out_of_memory(error.error) and isinstance(error.error, DETERMINISTIC):
            return Rejected(str(error))
        error = error.error
    # A lost connection, a storage hiccup, out of memory, anything unknown: maybe not next time.
    return RetryAfter(policy.delay(attempt), str(error) or type(error).__name__)


def decide(outcome: Outcome, attempt: int, policy: RetryPolicy) -> Decision:
    """The event and the settling of a job's message for its outcome on its `attempt`-th delivery.
    A job is acked only after its terminal event is published (the caller publishes first)."""
    match outcome:
        case Done(images):
            return Decision(Settle.ACK, "completed", images=images)
        case HandedOn():
            return Decision(Settle.ACK)
        case Cancelled():
            return Decision(Settle.ACK, "cancelled")
        case HandBack():
            return Decision(Settle.NAK)
        case Rejected(reason):
            return Decision(Settle.TERM, "failed", error=reason)
        case RetryAfter(delay_s, reason):
            if attempt >= policy.max_deliver:
                return Decision(Settle.TERM, "failed", error=f"failed after {attempt} attempts: {reason}")
            return Decision(Settle.NAK, delay_s=delay_s)
    raise TypeError(f"not an outcome: {outcome!r}")
