"""Prometheus metrics. Each process counts what it does (the API what it accepts, a worker what it
finishes, the notifier its webhook attempts) and Prometheus adds them up across replicas; queue
gauges are read from JetStream consumer info when the API is scraped, so every API replica agrees.

The API serves GET /metrics on its HTTP port; other services serve /metrics on `metrics.port` when
it is set (`diffbus up` gives each service its own port from there on)."""

import logging
import time
from datetime import datetime

import prometheus_client
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas import subjects
from schemas.subjects import PRIORITY_ORDER

from ..config import Config

log = logging.getLogger("diffbus.metrics")

REGISTRY = CollectorRegistry()
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

TASKS_ACCEPTED = Counter("diffbus_tasks_accepted", "Tasks accepted by this API, by kind", ["kind"],
                         registry=REGISTRY)
TASKS_COMPLETED = Counter("diffbus_tasks_completed", "Tasks this worker completed, by kind", ["kind"],
                          registry=REGISTRY)
TASKS_FAILED = Counter("diffbus_tasks_failed", "Tasks that ended failed here, by kind", ["kind"],
                       registry=REGISTRY)
TASKS_CANCELLED = Counter("diffbus_tasks_cancelled", "Tasks that ended cancelled here, by kind", ["kind"],
                          registry=REGISTRY)
QUEUE_DEPTH = Gauge("diffbus_queue_depth", "Jobs waiting (not yet delivered) per job subject", ["subject"],
                    registry=REGISTRY)
QUEUE_IN_PROGRESS = Gauge("diffbus_queue_in_progress", "Jobs delivered and not yet acked per job subject",
                          ["subject"], registry=REGISTRY)
QUEUE_OLDEST_AGE = Gauge("diffbus_queue_oldest_waiting_seconds", "Age of the oldest waiting job per job subject",
                         ["subject"], registry=REGISTRY)
KEY_QUEUED = Gauge("diffbus_key_tasks_queued", "Tasks waiting per API key (owner)", ["owner"], registry=REGISTRY)
KEY_RUNNING = Gauge("diffbus_key_tasks_running", "Tasks running per API key (owner)", ["owner"], registry=REGISTRY)
KEY_REFUSED = Counter("diffbus_key_tasks_refused", "Submits refused by a quota, per API key (owner) and limit",
                      ["owner", "limit"], registry=REGISTRY)
WORKERS_ANNOUNCED = Gauge("diffbus_workers_announced", "Live workers announced in the workers bucket", ["kind"],
                          registry=REGISTRY)
DENOISE_SECONDS = Histogram("diffbus_denoise_seconds", "Time in the diffusion pipeline per job (or batch)",
                            ["model"], registry=REGISTRY,
                            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300))
IMAGES = Counter("diffbus_images_generated", "Images generated (rate() of it is images/s)", ["model"],
                 registry=REGISTRY)
MODEL_LOADS = Counter("diffbus_model_loads", "Pipelines loaded from disk", ["model"], registry=REGISTRY)
MODEL_CACHE_HITS = Counter("diffbus_model_cache_hits", "Jobs served by an already loaded pipeline", ["model"],
                           registry=REGISTRY)
WEBHOOK_ATTEMPTS = Counter("diffbus_webhook_attempts", "Webhook POSTs by outcome (delivered, retry, failed)",
                           ["outcome"], registry=REGISTRY)
GPU_MEMORY = Gauge("diffbus_gpu_memory_bytes", "CUDA memory allocated by this worker", ["device"],
                   registry=REGISTRY)


def kind(spec) -> str:
    """A job spec's kind: txt2img, img2img, inpaint, upscale."""
    return type(spec).__struct_config__.tag


def render() -> bytes:
    return prometheus_client.generate_latest(REGISTRY)


def serve(config: Config) -> object | None:
    """Serve /metrics on metrics.port in a thread, when it is set; the server, to shut down."""
    if config.metrics.port is None:
        return None
    server, _thread = prometheus_client.start_http_server(config.metrics.port, config.metrics.host,
                                                          registry=REGISTRY)
    log.info("metrics on http://%s:%d/metrics", config.metrics.host, server.server_port)
    return server


def track_gpu_memory(device: str) -> None:
    """Report CUDA memory at scrape time (nothing on the CPU)."""
    if not device.startswith("cuda"):
        return
    import torch

    GPU_MEMORY.labels(device).set_function(lambda: torch.cuda.memory_allocated(device))


def job_queues(config: Config) -> list[tuple[str, str]]:
    """(job subject, durable consumer) of every queue the configured workers pull from."""
    queues = [(subjects.generate_job(p, m.name), subjects.gpu_durable(m.name, p))
              for p in PRIORITY_ORDER for m in config.models]
    return queues + [(subjects.upscale_job(p), subjects.upscale_durable(p)) for p in PRIORITY_ORDER]


def _age(stored: datetime | None, now: float) -> float:
    return 0.0 if stored is None else max(0.0, now - stored.timestamp())


async def refresh_queues(js, config: Config) -> None:
    """Queue gauges from consumer info: waiting, in progress, and the age of the oldest waiting job.
    A queue whose consumer does not exist yet (no worker ever started) counts the stream's messages.
    With fair sharing a generation queue also counts every key's own subject and consumer."""
    now = time.time()
    keyed = await _keyed_consumers(js) if config.quotas.fair_sharing else {}
    generate = {subjects.generate_job(p, m.name) for p in PRIORITY_ORDER for m in config.models}
    for subject, durable in job_queues(config):
        try:
            info = await js.consumer_info(subjects.JOBS, durable)
            waiting, running, after = info.num_pending or 0, info.num_ack_pending or 0, info.delivered.stream_seq
        except NotFoundError:
            state = await js.stream_info(subjects.JOBS, subjects_filter=subject)
            waiting, running, after = (state.state.subjects or {}).get(subject, 0), 0, 0
        age = 0.0
        if waiting:
            try:
                oldest = await js.get_msg(subjects.JOBS, seq=(after or 0) + 1, subject=subject, next=True)
                age = _age(oldest.time, now)
            except NotFoundError:
                pass
        if keyed and subject in generate:
            key_waiting, key_running, key_age = await _keyed_queue(js, subject, durable, keyed, now)
            waiting, running, age = waiting + key_waiting, running + key_running, max(age, key_age)
        QUEUE_DEPTH.labels(subject).set(waiting)
        QUEUE_IN_PROGRESS.labels(subject).set(running)
        QUEUE_OLDEST_AGE.labels(subject).set(age)


async def _keyed_consumers(js) -> dict[str, object]:
    """Every consumer of the JOBS stream by name (one request)."""
    try:
        return {info.name: info for info in await js.consumers_info(subjects.JOBS)}
    except NotFoundError:
        return {}


async def _keyed_queue(js, subject: str, durable: str, consumers: dict, now: float) -> tuple[int, int, float]:
    """Fair sharing: (waiting, in progress, oldest age) over every key's subject of a queue. The age is
    that of the oldest job not yet finished (a running one included)."""
    state = await js.stream_info(subjects.JOBS, subjects_filter=subjects.keyed(subject))
    stored = sum((state.state.subjects or {}).values())
    if not stored:
        return 0, 0, 0.0
    prefix = subjects.key_durable(durable, "")
    running = sum(info.num_ack_pending or 0 for name, info in consumers.items() if name.startswith(prefix))
    try:
        oldest = await js.get_msg(subjects.JOBS, seq=1, subject=subjects.keyed(subject), next=True)
        age = _age(oldest.time, now)
    except NotFoundError:
        age = 0.0
    return max(0, stored - running), running, age
