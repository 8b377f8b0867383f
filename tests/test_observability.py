"""Traces and metrics as an operator sees them, from a running diffbus.

Traces: services run as separate processes, so an in-memory exporter inside them cannot be read
from the test. Instead each service exports the way it does in production, over OTLP/HTTP (set by
OTEL_EXPORTER_OTLP_ENDPOINT), to a small collector in this test that decodes the protobuf requests.
That checks the real export path as well as the propagation. The propagation helpers on their own
are checked in-process with the SDK's InMemorySpanExporter (test_trace_context_crosses_nats)."""

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import nats
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from services.observability import telemetry
from services.cli.embedded import EmbeddedNats, free_port

from .conftest import Client, wait_ready
from .stack import Stack
from .test_webhooks import receiver  # noqa: F401 - the fixture

FAST = {"num_inference_steps": 2}


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.spans: list[dict] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append({
                            "service": service, "name": span.name, "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(), "parent_id": span.parent_span_id.hex(),
                            "attributes": {a.key: a.value.string_value or a.value.int_value
                                           for a in span.attributes}})

    def trace_of(self, task_id: str) -> list[dict]:
        with self.lock:
            publish = [s for s in self.spans if s["name"] == "publish" and s["attributes"].get("task_id") == task_id]
            if not publish:
                return []
            return [s for s in self.spans if s["trace_id"] == publish[0]["trace_id"]]


class _CollectorHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.server.add(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def collector():
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def observed(tmp_path_factory, demo_model, collector):
    """A diffbus exporting traces to `collector`, with worker and notifier metrics ports."""
    s = Stack(tmp_path_factory.mktemp("observed"), demo_model)
    s.worker_metrics, s.notifier_metrics = free_port(), free_port()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    s.start_nats()
    s.start("projector", env=otel)
    s.start("notifier", env={**otel, "DIFFBUS_METRICS__PORT": str(s.notifier_metrics)})
    s.start("gpu-worker", env={**otel, "DIFFBUS_METRICS__PORT": str(s.worker_metrics)})
    s.start("api", env=otel)
    try:
        wait_ready(s)
        yield s
        assert not s.crashed(), s.logs()
    finally:
        s.close()


@pytest.fixture
async def client(observed):
    async with aiohttp.ClientSession() as session:
        yield Client(session, observed.base_url)


async def eventually(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def test_one_trace_follows_a_task_through_api_worker_projector_and_webhook(
        client, collector, receiver):  # noqa: F811
    task_id = await client.submit({"prompt": "a traced cat", "callback_url": receiver.url("traced"), **FAST})
    assert (await client.wait(task_id))["status"] == "completed"
    await receiver.wait("traced")

    def complete_trace() -> list[dict]:
        spans = collector.trace_of(task_id)
        names = {(s["service"], s["name"]) for s in spans}
        assert {("diffbus-api", "POST /api/v1/generate"), ("diffbus-api", "publish"),
                ("diffbus-gpu-worker", "gpu.job"), ("diffbus-gpu-worker", "denoise"),
                ("diffbus-gpu-worker", "storage.put"), ("diffbus-projector", "projector.apply"),
                ("diffbus-notifier", "webhook.deliver")} <= names, names
        by_id = {s["span_id"]: s for s in spans}
        applied = [s for s in spans if s["name"] == "projector.apply"]
        # Events from the api (accepted), the worker (started, completed), the notifier (webhook_*).
        assert {by_id[s["parent_id"]]["service"] for s in applied if s["parent_id"] in by_id} == {
            "diffbus-api", "diffbus-gpu-worker", "diffbus-notifier"}
        return spans

    spans = await eventually(complete_trace)
    by_id = {s["span_id"]: s for s in spans}
    request = next(s for s in spans if s["name"] == "POST /api/v1/generate")
    publish = next(s for s in spans if s["name"] == "publish")
    job = next(s for s in spans if s["name"] == "gpu.job")
    denoise = next(s for s in spans if s["name"] == "denoise")
    assert publish["parent_id"] == request["span_id"]
    assert job["parent_id"] == publish["span_id"]  # across NATS, by the job message's traceparent
    assert by_id[denoise["parent_id"]]["name"] == "gpu.job"  # in the worker thread, still nested
    # The model was loaded before any task, in a trace of its own.
    assert any(s["name"] == "model.load" and s["service"] == "diffbus-gpu-worker" for s in collector.spans)


async def test_trace_context_crosses_nats(tmp_path):
    """telemetry.headers on the publishing side, telemetry.consuming on the other: one trace."""
    exporter = InMemorySpanExporter()
    provider = telemetry.setup("test", processor=SimpleSpanProcessor(exporter), environ={})
    server = EmbeddedNats(f"nats://127.0.0.1:{free_port()}", tmp_path).start()
    try:
        nc = await nats.connect(server.url)
        sub = await nc.subscribe("traced")
        with telemetry.span("submit"):
            await nc.publish("traced", b"x", headers=telemetry.headers({"Nats-Msg-Id": "1"}))
        msg = await sub.next_msg(timeout=5)
        assert msg.headers["Nats-Msg-Id"] == "1"
        with telemetry.consuming("work", [msg.headers, None]):
            pass
        await nc.close()
    finally:
        server.stop()
        provider.shutdown()
    submit, work = sorted(exporter.get_finished_spans(), key=lambda s: s.name)
    assert work.context.trace_id == submit.context.trace_id
    assert work.parent.span_id == submit.context.span_id
    assert work.kind is SpanKind.CONSUMER


def scrape(url: str) -> dict[tuple, float]:
    """Every sample of a Prometheus text page, by (name, sorted labels)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


SLOW = {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 60}
QUEUE = "jobs.generate.normal.demo"


async def test_metrics_move_with_real_tasks(client, observed, receiver):  # noqa: F811
    api, worker = f"{observed.base_url}/metrics", f"http://127.0.0.1:{observed.worker_metrics}/metrics"
    notifier = f"http://127.0.0.1:{observed.notifier_metrics}/metrics"
    before_api, before_worker, before_notifier = scrape(api), scrape(worker), scrape(notifier)

    # A slow job holds the worker while two more wait behind it: the queue gauges see them.
    slow = await client.submit(SLOW)
    waiting = [await client.submit({"prompt": f"q{i}", "callback_url": receiver.url("metrics"), **FAST})
               for i in range(2)]
    await eventually(lambda: _assert((value(scrape(api), "diffbus_queue_in_progress", subject=QUEUE), 1.0)))
    during = scrape(api)
    assert value(during, "diffbus_queue_depth", subject=QUEUE) == 2
    assert value(during, "diffbus_queue_oldest_waiting_seconds", subject=QUEUE) > 0
    assert value(during, "diffbus_workers_announced", kind="gpu") == 1
    await client.session.post(f"{observed.base_url}/api/v1/tasks/{slow}/cancel", headers=client.headers())
    for task_id in waiting:
        assert (await client.wait(task_id))["status"] == "completed"
    await receiver.wait("metrics", count=2)

    after_api = scrape(api)
    assert value(after_api, "diffbus_tasks_accepted_total", kind="txt2img") - value(
        before_api, "diffbus_tasks_accepted_total", kind="txt2img") == 3
    assert value(after_api, "diffbus_queue_depth", subject=QUEUE) == 0
    assert value(after_api, "diffbus_queue_oldest_waiting_seconds", subject=QUEUE) == 0

    def worker_counted() -> dict:
        after = scrape(worker)
        assert value(after, "diffbus_tasks_completed_total", kind="txt2img") - value(
            before_worker, "diffbus_tasks_completed_total", kind="txt2img") == 2
        return after

    after_worker = await eventually(worker_counted)
    assert value(after_worker, "diffbus_denoise_seconds_count", model="demo") - value(
        before_worker, "diffbus_denoise_seconds_count", model="demo") == 2  # finished calls only
    assert value(after_worker, "diffbus_images_generated_total", model="demo") - value(
        before_worker, "diffbus_images_generated_total", model="demo") == 2
    assert value(after_worker, "diffbus_model_loads_total", model="demo") == 1  # loaded once, at start
    assert value(after_worker, "diffbus_model_cache_hits_total", model="demo") - value(
        before_worker, "diffbus_model_cache_hits_total", model="demo") == 3  # the cancelled one too

    def webhooks_counted() -> None:
        delivered = value(scrape(notifier), "diffbus_webhook_attempts_total", outcome="delivered")
        assert delivered - value(before_notifier, "diffbus_webhook_attempts_total", outcome="delivered") == 2

    await eventually(webhooks_counted)


def _assert(pair: tuple) -> None:
    assert pair[0] == pair[1], pair


async def test_health_reports_every_dependency(observed):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{observed.base_url}/health") as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["status"] == "ok"
    deps = body["dependencies"]
    assert deps["nats"]["ok"] and deps["storage"] == {"ok": True, "backend": "nats"}
    assert deps["projector"] == {"ok": True}
    assert deps["workers"]["announced"] == 1 and deps["workers"]["by_kind"] == {"gpu": 1}
