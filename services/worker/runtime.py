"""The runtime that runs a worker service's stage handlers: its loop takes jobs from the queues (a
slot per job, `concurrency` at once), hands them to the settler, announces the worker, and on stop
finishes or hands back what it holds. Handlers reach the device, storage and progress only through
the methods here."""

import asyncio
import contextlib
import functools
import io
import logging
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from schemas import subjects
from schemas.codec import encode
from schemas.events import ImageResult, Progress
from schemas.jobs import Job, job_subject
from schemas.workers import WorkerAnnouncement

from .. import bus, lifecycle, storage
from ..config import Config
from ..observability import telemetry
from ..task.events import progress_from_thread
from .cancels import Cancels
from .outcomes import BadInput, Outcome, PipelineError, Rejected, RetryPolicy, Stopped
from .queues import Queues
from .settle import Settler, Work

log = logging.getLogger("diffbus.worker")


class WorkerService:
    """What a worker service provides: its queues, its stage table, how it announces itself."""

    kind = "worker"
    concurrency = 1  # jobs (or batches) handled at once; their blocking work still takes turns
    fair_shared = False  # whether its queues serve keys in turn when quotas.fair_sharing is on
    stages: dict = {}  # stage name (schemas.jobs.stages) -> async handler(work) -> Outcome

    def queues(self) -> list[tuple[str, str]]:
        """(subject, durable consumer) pairs, highest priority first."""
        raise NotImplementedError

    def announcement(self, worker_id: str) -> WorkerAnnouncement:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Load what jobs need before taking any."""

    async def gather(self, msg) -> list:
        """The jobs to run together with `msg` (dynamic batching)."""
        return [msg]

    async def run_batch(self, works: list[Work]) -> list[Outcome]:
        raise NotImplementedError

    async def handle(self, works: list[Work]) -> list[Outcome]:
        """One job through its stage's handler, or several (a batch) through run_batch."""
        if len(works) > 1:
            return await self.run_batch(works)
        [work] = works
        handler = self.stages.get(work.job.stage_name)
        if handler is None:
            return [Rejected(f"this worker has no {work.job.stage_name!r} stage")]
        return [await handler(work)]


def _once(fn):
    done = []

    def call() -> None:
        if not done:
            done.append(True)
            fn()
    return call


class Runtime:
    def __init__(self, config: Config, nc, kind: str, worker_id: str | None = None):
        self.config, self.nc, self.kind = config, nc, kind
        self.js = nc.jetstream()
        self.storage = storage.ObjectStoreStorage(self.js)
        self.id = worker_id or bus.worker_id(kind)  # one per process unless several runtimes share it
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=kind)
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix=f"{kind}-encode")  # off the device's thread
        self.stopping = False  # read by the work thread between steps
        self.queues = Queues(nc, self.js, config.worker)
        self.cancels = Cancels()
        self.settler = Settler(nc, self.js, self.id, self.cancels, RetryPolicy.from_config(config.worker),
                               config.worker.ack_wait_s)

    # --- the loop
    async def run(self, service: WorkerService, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.encoder.shutdown, wait=True)
            stack.callback(self.executor.shutdown, wait=True, cancel_futures=True)
            await service.prepare()
            await self.cancels.start(self.nc, self.js)
            stack.push_async_callback(self.cancels.stop)
            kv = await self.js.key_value(subjects.WORKERS_BUCKET)
            stack.push_async_callback(self._withdraw, kv)
            await self.queues.open(service.queues(), self.settler.on_max_deliveries,
                                   fair=service.fair_shared and self.config.quotas.fair_sharing, config=self.config)
            stack.push_async_callback(self.queues.close)
            for background in (self._announce(kv, service), self._on_stop(stop)):
                stack.callback(asyncio.create_task(background).cancel)
            log.info("%s ready", self.id)
            lifecycle.started()
            await self._take_jobs(service)

    async def _take_jobs(self, service: WorkerService) -> None:
        slots, handling = asyncio.Semaphore(service.concurrency), set()
        try:
            while not self.stopping:
                await slots.acquire()
                msg = None if self.stopping else await self.queues.next()
                if msg is None:
                    slots.release()
                    continue
                release = _once(slots.release)
                task = asyncio.create_task(self._handle(service, await service.gather(msg), release))
                handling.add(task)
                task.add_done_callback(handling.discard)
                task.add_done_callback(lambda _, release=release: release())
        finally:
            if handling:
                await asyncio.wait(handling)

    async def _handle(self, service: WorkerService, msgs: list, release) -> None:
        """Run one job, or (dynamic batching) several compatible ones as one call, and settle each.
        Traced as one span, child of the first job's publish (the other jobs of a batch are linked)."""
        try:
            with telemetry.consuming(f"{self.kind}.job", [m.headers for m in msgs], worker=self.id,
                                     subject=msgs[0].subject, jobs=len(msgs)):
                works = [w for m in msgs if (w := await self.settler.admit(m, release, self._stopping)) is not None]
                if works:
                    await self.settler.run(works, service.handle)
        except Exception:  # noqa: BLE001 - e.g. NATS lost mid-job: unacked, it is redelivered
            log.exception("jobs %s not settled", [m.metadata.sequence.stream for m in msgs])

    def _stopping(self) -> bool:
        return self.stopping

    async def _on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopping = True
        self.queues.doorbell.set()

    async def _announce(self, kv, service: WorkerService) -> None:
        while True:
            try:
                await kv.put(subjects.model_token(self.id), encode(service.announcement(self.id)))
            except Exception as e:  # noqa: BLE001 - keep announcing through reconnects
                log.warning("announce failed: %s", e)
            await asyncio.sleep(self.config.worker.announce_every_s)

    async def _withdraw(self, kv) -> None:
        try:
            await kv.delete(subjects.model_token(self.id))
        except Exception:  # noqa: BLE001 - the entry expires anyway
            pass

    # --- for handlers
    async def on_device(self, fn, *args):
        """Run blocking work on the device's thread, as it is (loading models at start)."""
        return await self.loop.run_in_executor(self.executor, telemetry.in_context(functools.partial(fn, *args)))

    async def run_pipeline(self, fn, rejects: tuple[type[Exception], ...] = ()):
        """Run a job's blocking work on the device's thread. `Stopped` and `BadInput` pass through,
        `rejects` become BadInput, anything else is a PipelineError for outcomes.classify."""
        try:
            return await self.on_device(fn)
        except (Stopped, BadInput):
            raise
        except rejects as e:
            raise BadInput(str(e)) from None
        except Exception as e:  # noqa: BLE001 - classified by outcomes.classify
            raise PipelineError(e) from e

    async def encode(self, fn):
        """Run `fn` (image encoding) on the encoder thread, so the device's thread can go on."""
        return await self.loop.run_in_executor(self.encoder, telemetry.in_context(fn))

    async def load_image(self, key: str) -> Image.Image:
        """An input image from storage; a missing one fails the job."""
        data = await self.storage.get(key)
        if data is None:
            raise BadInput(f"input image {key} is missing from storage")
        return Image.open(io.BytesIO(data))

    def publish_progress(self, progress: Progress) -> None:
        """Thread-safe: called from the work thread."""
        progress_from_thread(self.loop, self.nc, progress)

    async def store_results(self, job: Job, encoded: list[bytes], seeds: list[int], size: tuple[int, int],
                            fmt) -> list[ImageResult]:
        results, token = [], storage.new_token()
        for i, (data, seed) in enumerate(zip(encoded, seeds)):
            key = storage.result_key(token, i, fmt.extension)
            await self.storage.put(key, data)
            results.append(ImageResult(key=key, content_type=fmt.content_type, width=size[0], height=size[1],
                                       seed=seed))
        return results

    async def hand_on(self, job: Job, encoded: list[bytes]) -> None:
        """Store a stage's images and queue the task's next stage, which starts from them."""
        keys = []
        for i, data in enumerate(encoded):
            keys.append(storage.stage_key(job.task_id, job.stage_name, i))
            await self.storage.put(keys[-1], data)
        nxt = Job(task_id=job.task_id, spec=job.spec, priority=job.priority, stage=job.stage + 1, inputs=keys,
                  key=job.key)
        await bus.publish(self.js, job_subject(nxt), encode(nxt),
                          telemetry.headers({"Nats-Msg-Id": subjects.job_msg_id(job.task_id, nxt.stage)}))


async def serve(config: Config, name: str, kind: str, make_service) -> None:
    """A worker service's whole life: connect, ensure the streams, open storage, run until stopped, drain."""
    async with contextlib.AsyncExitStack() as stack:
        nc = await stack.enter_async_context(bus.serving(config, name))
        runtime = Runtime(config, nc, kind)
        runtime.storage = await storage.open_storage(config, runtime.js)
        await runtime.run(make_service(runtime), lifecycle.stop_event())
