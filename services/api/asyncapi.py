"""AsyncAPI 3.0 of the NATS side, generated from schemas/ so it cannot drift: each channel's address
comes from calling its schemas/subjects.py function with `{placeholders}`, its stream and retention
from subjects.streams(), its messages' JSON Schema from the msgspec Structs that travel on it."""

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from schemas import events, jobs, queries, subjects, workers
from services.config import Config

from .field_comments import describe

REF = "#/components/schemas/{name}"
EVENT_TYPES = events.AnyTaskEvent.__args__
TRACE_HEADERS = {"type": "object", "properties": {
    "traceparent": {"type": "string", "description": "W3C trace context: one trace spans api, worker, notifier"}}}
MSG_ID_HEADERS = {"type": "object", "properties": {
    **TRACE_HEADERS["properties"],
    "Nats-Msg-Id": {"type": "string", "description": "de-duplication within the stream's duplicate window: "
                                                     "the task id for jobs (`<id>.stage<n>` for later stages); for "
                                                     "task events `<id>.<event>...`, and `<id>.terminal` for the "
                                                     "one terminal event"}}}


@dataclass(frozen=True)
class Channel:
    id: str
    address: str | Callable[..., str]  # a subjects constant, or a subjects function of the parameters
    messages: tuple
    description: str
    publishers: str
    subscribers: str
    headers: dict | None = None
    reply: type | None = None
    queue: str | None = None  # the subscribers' queue group


def template(address: str | Callable[..., str]) -> str:
    """The subject a function builds, with `{name}` where each of its parameters goes."""
    if isinstance(address, str):
        return address
    names = list(inspect.signature(address).parameters)
    subject = address(*[f"zz{n}zz" for n in names])
    for name in names:
        subject = subject.replace(f"zz{name}zz", "{" + name + "}")
    return subject


def _kv(bucket: str) -> Callable[[str], str]:
    def entry(key: str) -> str:
        return subjects.kv_entry(bucket, key)
    entry.__name__ = f"kv_entry_{bucket}"
    return entry


CHANNELS = (
    Channel("generateJobs", subjects.generate_job, (jobs.Job,),
            "A generation job: the task's full JobSpec and which stage to run (a hires fix's refine pass "
            "comes back here after the upscaler). Storage keys, never image bytes.",
            "api; gpu_worker and upscaler for a task's next stage",
            f"gpu_worker: one durable pull consumer per model and priority, {template(subjects.gpu_durable)}; "
            "high before normal",
            headers=MSG_ID_HEADERS),
    Channel("upscaleJobs", subjects.upscale_job, (jobs.Job,), "An upscale job, or the upscale stage of a hires fix.",
            "api; gpu_worker for a hires fix's upscale stage",
            f"upscaler: durables {template(subjects.upscale_durable)}", headers=MSG_ID_HEADERS),
    Channel("taskEvents", subjects.task_event, EVENT_TYPES,
            f"Every event of a task's life; `{subjects.ALL_TASK_EVENTS}` is all of them. Replay the stream for an "
            "audit: the projector's task database is the fold of these events.",
            "api (accepted, cancel_requested, cancelled while pending), workers (started, completed, failed, "
            "cancelled), notifier (webhook_attempt, webhook_delivered, webhook_failed)",
            f"projector (durable `{subjects.PROJECTOR_DURABLE}`), notifier (durable `{subjects.NOTIFIER_DURABLE}`, "
            f"filtered to {', '.join(subjects.webhook_triggers())}), the API's live relays, auditors",
            headers=MSG_ID_HEADERS),
    Channel("progress", subjects.progress, (events.Progress,),
            "A task's latest progress: queue position while pending; steps, fraction, ETA and now and then a "
            "preview while processing. The stream keeps the last message of each task for late joiners.",
            "gpu_worker, upscaler, api (queue positions)",
            f"the API's SSE and WebSocket relays, the notifier (queue group `{subjects.NOTIFIER_QUEUE}`, for "
            "progress webhooks), anyone"),
    Channel("taskQuery", subjects.TASK_GET, (queries.TaskGet,),
            "Request/reply: one task as the projector holds it (the API never opens the database).",
            "api", f"projector (queue group `{subjects.PROJECTOR_QUEUE}`)", reply=queries.TaskReply,
            queue=subjects.PROJECTOR_QUEUE),
    Channel("taskList", subjects.TASK_LIST, (queries.TaskList,),
            "Request/reply: one page of an owner's tasks, by status and creation time (task history).",
            "api", f"projector (queue group `{subjects.PROJECTOR_QUEUE}`)", reply=queries.TaskPage,
            queue=subjects.PROJECTOR_QUEUE),
    Channel("maxDeliveries", subjects.max_deliveries_advisory, (subjects.MaxDeliveriesAdvisory,),
            "JetStream's advisory when a job used up its consumer's max_deliver: the worker ends the task failed.",
            "nats-server", "gpu_worker and upscaler, in a queue group named after the consumer"),
    Channel("cancelRequests", _kv(subjects.CANCEL_BUCKET), (events.CancelRequested,),
            f"KV bucket `{subjects.CANCEL_BUCKET}`, key: the task id. Workers skip a cancelled job and stop a "
            "running one between steps.", "api", "gpu_worker, upscaler"),
    Channel("workerAnnouncements", _kv(subjects.WORKERS_BUCKET), (workers.WorkerAnnouncement,),
            f"KV bucket `{subjects.WORKERS_BUCKET}`, key: the worker id; entries expire unless refreshed.",
            "gpu_worker, upscaler", "api (health, /api/v1/models, LoRA lists)"),
    Channel("dialectState", _kv(subjects.DIALECT_STATE_BUCKET), (dict,),
            f"KV bucket `{subjects.DIALECT_STATE_BUCKET}`: per-key state a dialect keeps (A1111 options, the "
            "latest task), so API replicas agree.", "api", "api"),
)

# Functions of schemas/subjects.py that name no subject of their own, and where what they name is told.
NOT_CHANNELS = {
    "stream_info_api": "JetStream's own API (the projector asks a stream's last sequence)",
    "model_token": "how a model name becomes the {model} token",
    "is_valid_task_id": "what a {task_id} may hold",
    "generate_jobs_any_priority": "a filter over generateJobs",
    "gpu_durable": "consumer names, in generateJobs",
    "key_token": "how an owner becomes the {key} token of fair sharing, in generateJobs",
    "keyed": "fair sharing: a key's own job subject, in generateJobs",
    "key_durable": "fair sharing: a key's own consumer name, in generateJobs",
    "upscale_durable": "consumer names, in upscaleJobs",
    "job_msg_id": "Nats-Msg-Id header, in the job channels",
    "event_msg_id": "Nats-Msg-Id header, in taskEvents",
    "webhook_triggers": "the notifier's filter, in taskEvents",
    "streams": "x-jetstream.streams",
    "kv_entry": "the KV channels",
}

PARAMETERS = {
    "task_id": {"description": "a task id: letters, digits, - and _, at most 64"},
    "event": {"enum": [t.name() for t in EVENT_TYPES], "description": "the event's name"},
    "priority": {"enum": [str(p) for p in subjects.PRIORITY_ORDER]},
    "model": {"description": "a configured model name as a token: lower case, [a-z0-9_-] (subjects.model_token)"},
    "stream": {"description": "a stream name", "examples": [subjects.JOBS]},
    "consumer": {"description": "a durable consumer name"},
    "key": {"description": "the entry's key"},
}


def _matches(pattern: str, subject: str) -> bool:
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


def _stream(address: str, streams) -> dict | None:
    concrete = address.replace("{", "x").replace("}", "x")
    for spec in streams:
        if any(_matches(pattern, concrete) for pattern in spec.subjects):
            return msgspec.to_builtins(spec)
    return None


def _strip_discriminators(schema):
    """AsyncAPI's Schema Object has no OpenAPI-style discriminator object; each variant's tag is const."""
    if isinstance(schema, dict):
        return {k: _strip_discriminators(v) for k, v in schema.items() if k != "discriminator"}
    if isinstance(schema, list):
        return [_strip_discriminators(v) for v in schema]
    return schema


def _message_name(t) -> str:
    return t.name() if t in EVENT_TYPES else "state" if t is dict else t.__name__


def _channel(ch: Channel, refs: dict, streams) -> tuple[dict, dict]:
    address = template(ch.address)
    stream = _stream(address, streams)
    where = (f" Stream `{stream['name']}`: {stream['retention']} retention, {stream['storage']} storage"
             + (f", max age {stream['max_age_s']:g} s" if stream["max_age_s"] else "")
             + (f", {stream['max_msgs_per_subject']} message per subject" if stream["max_msgs_per_subject"] else "")
             + "." if stream else "")
    messages = {}
    for t in ch.messages:
        name = _message_name(t)
        messages[name] = {"name": name, "contentType": "application/json", "payload": refs[t],
                          **({"headers": ch.headers} if ch.headers else {})}
    body = {"address": address, "description": f"{ch.description}{where} Published by {ch.publishers}; read by "
                                               f"{ch.subscribers}.", "messages": messages}
    names = re.findall(r"\{(\w+)\}", address)
    if names:
        body["parameters"] = {n: PARAMETERS.get(n, {}) for n in names}
    if stream:
        body["x-stream"] = stream
    op: dict = {"action": "receive", "channel": {"$ref": f"#/channels/{ch.id}"},
                "summary": f"Subscribe to {address}",
                "messages": [{"$ref": f"#/channels/{ch.id}/messages/{n}"} for n in messages]}
    if ch.queue:
        op["bindings"] = {"nats": {"queue": ch.queue, "bindingVersion": "0.1.0"}}
    if ch.reply is not None:
        reply_name = _message_name(ch.reply)
        body["messages"][reply_name] = {"name": reply_name, "contentType": "application/json",
                                        "payload": refs[ch.reply]}
        op.update(action="send", summary=f"Ask on {address}",
                  reply={"channel": {"$ref": f"#/channels/{ch.id}"},
                         "messages": [{"$ref": f"#/channels/{ch.id}/messages/{reply_name}"}]})
    return body, op


def constants() -> dict[str, str]:
    """Every name schemas/subjects.py spells as a constant."""
    return {k: v for k, v in vars(subjects).items() if k.isupper() and isinstance(v, str)}


def document(config: Config) -> dict:
    streams = subjects.streams(config.retention.days)
    types = list(dict.fromkeys(t for ch in CHANNELS for t in (*ch.messages, *filter(None, [ch.reply]))))
    found, components = msgspec.json.schema_components(types, ref_template=REF)
    describe(components, types)
    refs = dict(zip(types, found))
    channels, operations = {}, {}
    for ch in CHANNELS:
        channels[ch.id], operations[ch.id] = _channel(ch, refs, streams)
    names = constants()
    host = config.nats.url.split("://", 1)[-1].split(",")[0]
    return _strip_discriminators({
        "asyncapi": "3.0.0",
        "info": {"title": "diffbus on NATS", "version": str(jobs.SCHEMA_VERSION), "description": (
            "The NATS JetStream side of diffbus: what to subscribe to for progress, what to replay for an audit. "
            "Every message is JSON (msgspec) with a schema_version. See docs/subscribing.md.")},
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": host, "protocol": "nats", "description": "this deployment's NATS"}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components},
        "x-jetstream": {
            "streams": [msgspec.to_builtins(s) for s in streams],
            "buckets": {k: v for k, v in names.items() if k.endswith("_BUCKET")},
            "consumers": {k: v for k, v in names.items() if k.endswith(("_DURABLE", "_QUEUE"))},
            "names": names,
        },
    })
