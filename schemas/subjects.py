"""Every subject, stream, durable consumer and bucket name, and the stream configs: the one place
they are spelled. Services build nats-py configs from the specs here (services/bus.py)."""

import hashlib
import re
from enum import StrEnum

import msgspec

# Streams
JOBS = "JOBS"
TASKS = "TASKS"
PROGRESS = "PROGRESS"

# Buckets
IMAGES_BUCKET = "images"  # object store: inputs and results
CANCEL_BUCKET = "cancel"  # KV: task_id -> cancel request
WORKERS_BUCKET = "workers"  # KV: worker_id -> WorkerAnnouncement, expires unless refreshed
DIALECT_STATE_BUCKET = "dialect-state"  # KV: per-key state a dialect keeps (A1111 options, latest task)

# Durable consumers
PROJECTOR_DURABLE = "projector"
NOTIFIER_DURABLE = "notifier"
NOTIFIER_QUEUE = "notifier"  # core queue group sharing progress webhooks between notifiers

# Request/reply
TASK_GET = "query.tasks.get"
TASK_LIST = "query.tasks.list"
PROJECTOR_QUEUE = "projector"

_TOKEN_RE = re.compile(r"[^a-z0-9_-]")
_KEY_TOKEN_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"


PRIORITY_ORDER = (Priority.HIGH, Priority.NORMAL)


def model_token(model: str) -> str:
    """A model name as a subject token: lower-case `[a-z0-9_-]`."""
    token = _TOKEN_RE.sub("_", model.lower())
    if not token:
        raise ValueError(f"model name {model!r} has no usable characters")
    return token


def is_valid_task_id(task_id: str) -> bool:
    """Task ids become subject tokens: no dots, wildcards or spaces."""
    return bool(TASK_ID_RE.match(task_id))


def generate_job(priority: Priority, model: str) -> str:
    return f"jobs.generate.{priority}.{model_token(model)}"


def generate_jobs_any_priority(model: str) -> str:
    return f"jobs.generate.*.{model_token(model)}"


def upscale_job(priority: Priority) -> str:
    return f"jobs.upscale.{priority}"


def gpu_durable(model: str, priority: Priority) -> str:
    return f"gpu-{model_token(model)}-{priority}"


def key_token(owner: str) -> str:
    """An API key's owner (any Unicode) as a subject token: the name itself when it is one, else a digest."""
    return owner if _KEY_TOKEN_RE.match(owner) else "k" + hashlib.sha256(owner.encode()).hexdigest()[:16]


def keyed(subject: str, key: str = "*") -> str:
    """Fair sharing: one key's jobs of a job subject (`*`: every key's)."""
    return f"{subject}.{key}"


def key_durable(durable: str, key: str) -> str:
    """Fair sharing: the consumer of one key's jobs of a queue."""
    return f"{durable}-{key}"


def task_event(task_id: str, event: str) -> str:
    return f"tasks.{task_id}.{event}"


ALL_TASK_EVENTS = "tasks.>"


def progress(task_id: str) -> str:
    return f"progress.{task_id}"


# Message ids (Nats-Msg-Id) for de-duplication inside a stream's duplicate window.
def job_msg_id(task_id: str, stage: int = 0) -> str:
    return task_id if stage == 0 else f"{task_id}.stage{stage}"


def event_msg_id(task_id: str, event: str, *qualifiers: object) -> str:
    """Terminal events share one id so only the first terminal event of a task is stored; others
    are told apart by qualifiers (an attempt number, what a webhook was about)."""
    if event in {"completed", "failed", "cancelled"}:
        return f"{task_id}.terminal"
    return ".".join([task_id, event, *map(str, qualifiers)])


def webhook_triggers() -> list[str]:
    """The task events a notifier turns into webhooks (progress comes from `progress.*`)."""
    return [task_event("*", event) for event in ("started", "completed", "failed", "cancelled")]


class StreamSpec(msgspec.Struct, frozen=True):
    name: str
    subjects: tuple[str, ...]
    retention: str  # "workqueue" | "limits"
    storage: str  # "file" | "memory"
    max_age_s: float | None = None
    max_msgs_per_subject: int | None = None
    duplicate_window_s: float = 120.0


def streams(retention_days: float) -> tuple[StreamSpec, ...]:
    """Every stream; TASKS keeps events `retention_days` (0: forever), as long as the tasks they make."""
    return (
        StreamSpec(JOBS, ("jobs.>",), retention="workqueue", storage="file"),
        StreamSpec(TASKS, (ALL_TASK_EVENTS,), retention="limits", storage="file",
                   max_age_s=retention_days * 86400 or None),
        StreamSpec(PROGRESS, ("progress.>",), retention="limits", storage="memory",
                   max_age_s=3600, max_msgs_per_subject=1),
    )


def stream_info_api(stream: str) -> str:
    """JetStream's API subject that answers a stream's info (its state: messages, last sequence)."""
    return f"$JS.API.STREAM.INFO.{stream}"


def max_deliveries_advisory(stream: str, consumer: str = "*") -> str:
    """Published by JetStream when a message used up a consumer's max_deliver."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"


class MaxDeliveriesAdvisory(msgspec.Struct):
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


def upscale_durable(priority: Priority) -> str:
    return f"upscale-{priority}"


def kv_entry(bucket: str, key: str) -> str:
    """Where JetStream keeps a KV bucket's entry: watch `kv_entry(bucket, "*")` to follow a bucket."""
    return f"$KV.{bucket}.{key}"
