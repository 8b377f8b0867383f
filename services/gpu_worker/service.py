"""gpu_worker: pulls generation jobs for the models it serves (high priority first), runs them in an
executor while heartbeating the message, stores the images and publishes the terminal event before it
acks. A worker that dies leaves its job to be redelivered to another."""

import asyncio
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyNotFoundError
from PIL import Image

from schemas import subjects
from schemas.codec import decode, encode
from schemas.events import Cancelled, CancelRequested, Completed, Failed, ImageResult, Progress, Started
from schemas.jobs import Img2Img, Job
from schemas.subjects import PRIORITY_ORDER
from schemas.workers import WorkerAnnouncement
from services import bus, storage
from services.config import Config
from services.lifecycle import stop_event

from . import generate, images
from .pipelines import ModelRegistry
from .progress import StepReporter

log = logging.getLogger("diffbus.gpu_worker")

IDLE_POLL_S = 1.0  # without a doorbell, look at every queue this often (redeliveries ring no bell)
FETCH_S = 0.05  # how long a pull request waits on a queue believed to hold work
TERMINAL_EVENTS = (Completed.name(), Failed.name(), Cancelled.name())


class GpuWorker:
    def __init__(self, config: Config, nc, registry: ModelRegistry):
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.storage = storage.ObjectStoreStorage(self.js)
        self.registry = registry
        self.id = bus.worker_id("gpu")
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="generate")
        self.stopping = False  # read by the generation thread between steps
        self.doorbell = asyncio.Event()
        self.queues: list = []  # pull subscriptions, in the order they are served
        self.queue_of: dict[str, int] = {}  # job subject -> index in queues
        self.ready: set[int] = set()  # queues believed to hold work
        self.subs: list = []  # core subscriptions

    async def run(self, stop: asyncio.Event) -> None:
        self.loop = loop = asyncio.get_running_loop()
        for model in self.registry.served:
            await loop.run_in_executor(self.executor, self.registry.pipeline, model.name)
        self.cancels = await self.js.key_value(subjects.CANCEL_BUCKET)
        kv = await self.js.key_value(subjects.WORKERS_BUCKET)
        tasks = [asyncio.create_task(self._announce(kv)), asyncio.create_task(self._on_stop(stop))]
        await self._subscribe()
        self.ready.update(range(len(self.queues)))  # jobs may have queued before this worker started
        log.info("worker %s ready: models %s on %s", self.id, self.registry.loaded, self.registry.device)
        try:
            while not self.stopping:
                msg = await self._next_job()
                if msg is None:
                    continue
                try:
                    await self._handle(msg)
                except Exception:  # noqa: BLE001 - e.g. NATS lost mid-job: unacked, it is redelivered
                    log.exception("job %s not settled", msg.metadata.sequence.stream)
        finally:
            for task in tasks:
                task.cancel()
            for sub in self.queues + self.subs:
                await sub.unsubscribe()
            try:
                await kv.delete(self._kv_key)
            except Exception:  # noqa: BLE001 - the entry expires anyway
                pass
            self.executor.shutdown(wait=True, cancel_futures=True)

    async def _on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopping = True
        self.doorbell.set()

    @property
    def _kv_key(self) -> str:
        return subjects.model_token(self.id)

    async def _announce(self, kv) -> None:
        while True:
            note = WorkerAnnouncement(
                worker=self.id, kind="gpu", models_served=[m.name for m in self.registry.served],
                models_loaded=self.registry.loaded, device=self.registry.device, at=time.time())
            try:
                await kv.put(self._kv_key, encode(note))
            except Exception as e:  # noqa: BLE001 - keep announcing through reconnects
                log.warning("announce failed: %s", e)
            await asyncio.sleep(self.config.worker.announce_every_s)

    async def _subscribe(self) -> None:
        wcfg = self.config.worker
        for priority in PRIORITY_ORDER:  # every model's high-priority queue before any normal one
            for model in self.registry.served:
                subject = subjects.generate_job(priority, model.name)
                self.queue_of[subject] = len(self.queues)
                self.queues.append(await self.js.pull_subscribe(
                    subject,
                    durable=subjects.gpu_durable(model.name, priority),
                    stream=subjects.JOBS,
                    config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=wcfg.ack_wait_s,
                                          max_deliver=wcfg.max_deliver, max_ack_pending=1000)))
        # A doorbell: job publishes reach core subscribers too, so an idle worker wakes at once.
        for model in self.registry.served:
            self.subs.append(await self.nc.subscribe(
                subjects.generate_jobs_any_priority(model.name), cb=self._ring))
        self.subs.append(await self.nc.subscribe(
            subjects.max_deliveries_advisory(subjects.JOBS), queue="gpu-advisories",
            cb=self._on_max_deliveries))

    async def _ring(self, msg) -> None:
        index = self.queue_of.get(msg.subject)
        if index is not None:
            self.ready.add(index)
            self.doorbell.set()

    async def _next_job(self):
        """The next job from the first queue (high priority first) that holds one, or None after
        an idle wait."""
        if not self.ready:
            self.doorbell.clear()
            try:
                await asyncio.wait_for(self.doorbell.wait(), IDLE_POLL_S)
            except TimeoutError:
                self.ready.update(range(len(self.queues)))
            return None
        index = min(self.ready)
        try:
            [msg] = await self.queues[index].fetch(1, timeout=FETCH_S)
        except TimeoutError:  # nats-py raises both its own and the builtin one
            self.ready.discard(index)
            return None
        if msg.metadata.num_pending == 0:
            self.ready.discard(index)
        return msg

    async def _handle(self, msg) -> None:
        attempt = msg.metadata.num_delivered
        try:
            job = decode(msg.data, Job)
        except Exception as e:  # noqa: BLE001 - a message we cannot read can never succeed
            log.error("dropping undecodable job %s: %s", msg.metadata.sequence.stream, e)
            await msg.term()
            return
        task_id = job.task_id
        if attempt > 1 and await self._finished(task_id):
            await msg.ack()
            return
        cancel = threading.Event()  # read by the generation thread between steps

        async def on_cancel(_msg) -> None:
            cancel.set()

        watch = await self.nc.subscribe(subjects.task_event(task_id, CancelRequested.name()), cb=on_cancel)
        try:
            if await self._cancel_requested(task_id):  # asked before this worker subscribed
                cancel.set()
            await self._run(msg, job, attempt, cancel)
        finally:
            await watch.unsubscribe()

    async def _run(self, msg, job: Job, attempt: int, cancel: threading.Event) -> None:
        task_id = job.task_id
        if cancel.is_set():  # a pending task that was cancelled never starts
            await self._cancelled(msg, task_id)
            return
        await bus.publish_event(self.js, Started(task_id=task_id, at=time.time(), worker=self.id,
                                                 attempt=attempt), attempt)
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        started = time.perf_counter()
        try:
            results = await self._generate(job, attempt, cancel)
        except generate.Interrupted:
            if cancel.is_set():
                await self._cancelled(msg, task_id)
            else:
                log.info("task %s interrupted by shutdown; handing it back", task_id)
                await msg.nak()
        except generate.GenerationError as e:
            await self._fail(msg, task_id, str(e))
        except Exception as e:  # noqa: BLE001 - transient until max_deliver
            log.exception("task %s attempt %d failed", task_id, attempt)
            if attempt >= self.config.worker.max_deliver:
                await self._fail(msg, task_id, f"failed after {attempt} attempts: {e}")
            else:
                await msg.nak(delay=2.0 ** attempt)
        else:
            await bus.publish_event(self.js, Completed(
                task_id=task_id, at=time.time(), worker=self.id, images=results,
                elapsed_s=time.perf_counter() - started))
            await msg.ack_sync()
        finally:
            heartbeat.cancel()

    async def _cancelled(self, msg, task_id: str) -> None:
        """Partial work is dropped; the job is acked so it is never redelivered."""
        await bus.publish_event(self.js, Cancelled(task_id=task_id, at=time.time(), worker=self.id))
        await msg.ack_sync()

    async def _cancel_requested(self, task_id: str) -> bool:
        try:
            await self.cancels.get(task_id)
        except KeyNotFoundError:
            return False
        return True

    async def _fail(self, msg, task_id: str, error: str) -> None:
        await bus.publish_event(self.js, Failed(task_id=task_id, at=time.time(), error=error, worker=self.id))
        await msg.term()

    async def _finished(self, task_id: str) -> bool:
        for event in TERMINAL_EVENTS:
            if await bus.last_event(self.js, task_id, event) is not None:
                return True
        return False

    async def _keep_alive(self, msg) -> None:
        while True:
            await asyncio.sleep(self.config.worker.ack_wait_s / 3)
            try:
                await msg.in_progress()
            except Exception as e:  # noqa: BLE001 - a missed heartbeat only risks a redelivery
                log.warning("heartbeat failed: %s", e)

    def _publish_progress(self, progress: Progress) -> None:
        """Thread-safe: called from the generation thread."""
        data = encode(progress)
        self.loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(self.nc.publish(subjects.progress(progress.task_id), data)))

    async def _generate(self, job: Job, attempt: int, cancel: threading.Event) -> list[ImageResult]:
        spec = job.spec
        init_image = None
        if isinstance(spec, Img2Img):
            data = await self.storage.get(spec.init_image)
            if data is None:
                raise generate.GenerationError(f"input image {spec.init_image} is missing from storage")
            init_image = Image.open(io.BytesIO(data))

        reporter = StepReporter(job.task_id, generate.total_steps(spec), attempt, (spec.width, spec.height),
                                self.config.progress, self._publish_progress)

        def on_step(index: int, timesteps: int, latents) -> bool:
            reporter.step(index, timesteps, latents)
            return self.stopping or cancel.is_set()

        def work() -> list[bytes]:
            pipe = self.registry.pipeline(spec.model)
            pictures = generate.run(pipe, spec, init_image, on_step)
            return [images.encode(p, spec.output_format, images.infotext(spec, seed))
                    for p, seed in zip(pictures, spec.seeds)]

        encoded = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        results = []
        for i, (data, seed) in enumerate(zip(encoded, spec.seeds)):
            key = storage.result_key(job.task_id, i, spec.output_format.extension)
            await self.storage.put(key, data)
            results.append(ImageResult(key=key, content_type=spec.output_format.content_type,
                                       width=spec.width, height=spec.height, seed=seed))
        return results

    async def _on_max_deliveries(self, msg) -> None:
        """A job whose every attempt died with its worker: end it failed and drop it from the queue."""
        try:
            seq = decode(msg.data, subjects.MaxDeliveriesAdvisory).stream_seq
            stored = await self.js.get_msg(subjects.JOBS, seq)
            job = decode(stored.data, Job)
        except Exception as e:  # noqa: BLE001 - already gone, or not ours
            log.debug("max-deliveries advisory not handled: %s", e)
            return
        attempts = self.config.worker.max_deliver
        await bus.publish_event(self.js, Failed(
            task_id=job.task_id, at=time.time(),
            error=f"no worker finished the job: {attempts} attempt(s) ended with the worker crashing or stopping"))
        await self.js.delete_msg(subjects.JOBS, seq)


async def run(config: Config) -> None:
    registry = ModelRegistry(config)
    nc = await bus.connect(config, "gpu-worker")
    try:
        await bus.ensure(nc.jetstream(), config)
        await GpuWorker(config, nc, registry).run(stop_event())
    finally:
        await nc.drain()
