"""The life of a job on any worker (gpu_worker, upscaler): pull it from the first queue that holds
one (high priority first, woken by a doorbell), skip it if cancelled, announce the start, heartbeat
while it runs, then complete, chain the next stage, fail, or hand it back, and only then ack.
A worker that dies leaves its job to be redelivered to another."""

import asyncio
import contextvars
import io
import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nats.js.api import AckPolicy, ConsumerConfig
from PIL import Image

from schemas import subjects
from schemas.codec import decode, encode
from schemas.events import Cancelled, CancelRequested, Completed, Failed, ImageResult, Progress, Started
from schemas.jobs import Job, job_subject
from schemas.workers import WorkerAnnouncement

from .. import bus, lifecycle, metrics, storage, telemetry
from ..config import Config
from ..lifecycle import stop_event
from .fairshare import FairQueue

log = logging.getLogger("diffbus.jobloop")

CANCELS_LOAD_S = 60.0  # how long the start may wait for the cancel bucket's contents
IDLE_POLL_S = 1.0  # without a doorbell, look at every queue this often (redeliveries ring no bell)
FETCH_S = 0.05  # how long a pull request waits on a queue believed to hold work
TERMINAL_EVENTS = (Completed.name(), Failed.name(), Cancelled.name())


SLOT: contextvars.ContextVar = contextvars.ContextVar("slot")  # frees the running job's slot (once)


def _once(fn):
    done = []

    def call() -> None:
        if not done:
            done.append(True)
            fn()
    return call


class JobError(Exception):
    """The job cannot be done as asked (bad parameters, missing input): fail now, do not retry."""


class Interrupted(Exception):
    """Work stopped between steps because the task was cancelled or the worker is stopping."""


@dataclass
class _Entry:
    msg: object
    job: Job
    attempt: int
    cancel: threading.Event


class Cancels:
    """The tasks asked to stop, known in the worker: the cancel bucket's keys, watched from its start
    (requests made while this worker was away count), and `cancel_requested` events as they happen. A
    job's cancel Event is set at once if its task was asked before, or when the request arrives."""

    ASKED = 100_000  # task ids remembered (the bucket forgets them after a week)

    def __init__(self):
        self.asked: OrderedDict[str, None] = OrderedDict()
        self.running: dict[str, list[threading.Event]] = {}

    async def start(self, nc, js) -> None:
        """Returns once every request already in the bucket is known."""
        kv = await js.key_value(subjects.CANCEL_BUCKET)
        self.watcher = await bus.retry(lambda: kv.watchall(ignore_deletes=True), "cancel watch")
        while (entry := await self.watcher.updates(timeout=CANCELS_LOAD_S)) is not None:
            self._asked(entry.key)
        self.pump = asyncio.create_task(self._pump())
        self.sub = await nc.subscribe(subjects.task_event("*", CancelRequested.name()),
                                      cb=self._on_event)

    async def _pump(self) -> None:
        async for entry in self.watcher:
            if entry is not None:
                self._asked(entry.key)

    async def _on_event(self, msg) -> None:
        self._asked(msg.subject.split(".")[1])

    def _asked(self, task_id: str) -> None:
        self.asked[task_id] = None
        if len(self.asked) > self.ASKED:
            self.asked.popitem(last=False)
        for event in self.running.get(task_id, ()):
            event.set()

    def watch(self, task_id: str) -> threading.Event:
        event = threading.Event()  # read by the work thread between steps
        self.running.setdefault(task_id, []).append(event)
        if task_id in self.asked:
            event.set()
        return event

    def unwatch(self, task_id: str, event: threading.Event) -> None:
        events = self.running.get(task_id, [])
        if event in events:
            events.remove(event)
        if not events:
            self.running.pop(task_id, None)

    async def stop(self) -> None:
        self.pump.cancel()
        await self.sub.unsubscribe()
        await self.watcher.stop()


class JobWorker:
    """Subclasses name their queues and do the work; this class settles every message."""

    kind = "worker"
    concurrency = 1  # jobs (or batches) handled at once; their blocking work still takes turns
    fair_shared = False  # whether its queues serve keys in turn when quotas.fair_sharing is on

    def __init__(self, config: Config, nc):
        self.config = config
        self.nc = nc
        self.js = nc.jetstream()
        self.storage = storage.ObjectStoreStorage(self.js)
        self.id = bus.worker_id(self.kind)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=self.kind)
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix=f"{self.kind}-encode")  # off the device's thread
        self.stopping = False  # read by the work thread between steps
        self.doorbell = asyncio.Event()
        self.queues: list = []  # pull subscriptions, in the order they are served
        self.queue_of: dict[str, int] = {}  # job subject -> index in queues
        self.fair_of: dict[str, int] = {}  # job subject -> index of its FairQueue (fair sharing)
        self.ready: set[int] = set()  # queues believed to hold work
        self.subs: list = []  # core subscriptions
        self.held: deque = deque()  # fetched while gathering a batch, run next (heartbeated meanwhile)
        self.holding: dict[int, asyncio.Task] = {}  # id(msg) -> its heartbeat while held

    # --- what a subclass provides
    def queue_subjects(self) -> list[tuple[str, str]]:
        """(subject, durable consumer) pairs, highest priority first."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Load what jobs need before taking any."""

    def announcement(self) -> WorkerAnnouncement:
        raise NotImplementedError

    async def work(self, job: Job, attempt: int, cancel: threading.Event) -> list[ImageResult] | None:
        """Run the job's stage: the task's images when it was the last stage, None when the next
        stage has been published."""
        raise NotImplementedError

    async def gather(self, msg) -> list:
        """The jobs to run together with `msg` (dynamic batching); others fetched meanwhile go to
        self.held, to run next."""
        return [msg]

    async def work_batch(self, jobs: list[Job], attempts: list[int],
                         cancels: list[threading.Event]) -> list[list[ImageResult]]:
        raise NotImplementedError

    # --- the loop
    async def run(self, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        await self.prepare()
        self.cancels = Cancels()
        await self.cancels.start(self.nc, self.js)
        kv = await self.js.key_value(subjects.WORKERS_BUCKET)
        await self._subscribe()
        background = [asyncio.create_task(self._announce(kv)), asyncio.create_task(self._on_stop(stop))]
        self.ready.update(range(len(self.queues)))  # jobs may have queued before this worker started
        log.info("%s ready", self.id)
        lifecycle.started()
        slots, handling = asyncio.Semaphore(self.concurrency), set()
        try:
            while not self.stopping:
                await slots.acquire()
                if self.stopping:
                    break
                msg = self.held.popleft() if self.held else await self._next_job()
                if msg is None:
                    slots.release()
                    continue
                msgs = await self.gather(msg)
                for m in msgs:
                    task = self.holding.pop(id(m), None)
                    if task:
                        task.cancel()
                release = _once(slots.release)
                task = asyncio.create_task(self._settle(msgs, release))
                handling.add(task)
                task.add_done_callback(handling.discard)
                task.add_done_callback(lambda _, release=release: release())
        finally:
            if handling:
                await asyncio.wait(handling)
            for task in background + list(self.holding.values()):
                task.cancel()
            for msg in self.held:  # fetched, never started: straight back to the queue
                await msg.nak()
            for sub in self.queues + self.subs:
                await sub.unsubscribe()
            await self.cancels.stop()
            try:
                await kv.delete(subjects.model_token(self.id))
            except Exception:  # noqa: BLE001 - the entry expires anyway
                pass
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.encoder.shutdown(wait=True)

    async def _on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopping = True
        self.doorbell.set()

    async def _announce(self, kv) -> None:
        while True:
            try:
                await kv.put(subjects.model_token(self.id), encode(self.announcement()))
            except Exception as e:  # noqa: BLE001 - keep announcing through reconnects
                log.warning("announce failed: %s", e)
            await asyncio.sleep(self.config.worker.announce_every_s)

    async def _subscribe(self) -> None:
        wcfg = self.config.worker
        consumer = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=wcfg.ack_wait_s,
                                  max_deliver=wcfg.max_deliver, max_ack_pending=1000)
        for subject, durable in self.queue_subjects():
            if self.fair_shared and self.config.quotas.fair_sharing:  # every key's jobs, in turn
                index = len(self.queues)
                self.fair_of[subject] = index
                self.queues.append(await FairQueue(
                    self.js, self.nc, subject, durable, consumer, self.config, ring=lambda i=index: self._ring_queue(i),
                    on_max_deliveries=self._on_max_deliveries).start())
            self.queue_of[subject] = len(self.queues)  # jobs queued with no key (fair sharing off)
            self.queues.append(await bus.retry(lambda subject=subject, durable=durable: self.js.pull_subscribe(
                subject, durable=durable, stream=subjects.JOBS, config=consumer), f"consumer {durable}"))
            # A doorbell: job publishes reach core subscribers too, so an idle worker wakes at once.
            self.subs.append(await self.nc.subscribe(subject, cb=self._ring))
            self.subs.append(await self.nc.subscribe(
                subjects.max_deliveries_advisory(subjects.JOBS, durable), queue=durable,
                cb=self._on_max_deliveries))

    async def _ring(self, msg) -> None:
        self._ring_queue(self.queue_of[msg.subject])

    def _ring_queue(self, index: int) -> None:
        self.ready.add(index)
        self.doorbell.set()

    def queue_index(self, subject: str) -> int:
        """Which of self.queues a job's subject is pulled from (a key's subject: its fair-shared queue)."""
        return self.queue_of[subject] if subject in self.queue_of else self.fair_of[subject.rsplit(".", 1)[0]]

    async def _next_job(self):
        """The next job from the first queue that holds one, or None after an idle wait."""
        if not self.ready:
            self.doorbell.clear()
            try:
                await asyncio.wait_for(self.doorbell.wait(), IDLE_POLL_S)
            except TimeoutError:
                self.ready.update(range(len(self.queues)))
            return None
        index = min(self.ready)
        fetched = await bus.fetch(self.queues[index], 1, FETCH_S)
        if not fetched:
            if not getattr(self.queues[index], "holds_more", False):  # a fair-shared queue knows better
                self.ready.discard(index)
            return None
        [msg] = fetched
        if msg.metadata.num_pending == 0 and not getattr(self.queues[index], "holds_more", False):
            self.ready.discard(index)
        return msg

    async def _settle(self, msgs: list, release) -> None:
        SLOT.set(release)
        try:
            await self._handle(msgs)
        except Exception:  # noqa: BLE001 - e.g. NATS lost mid-job: unacked, it is redelivered
            log.exception("jobs %s not settled", [m.metadata.sequence.stream for m in msgs])

    async def _handle(self, msgs: list) -> None:
        """Run one job, or (dynamic batching) several compatible ones as one call, and settle each.
        Traced as one span, child of the first job's publish (the other jobs of a batch are linked)."""
        entries: list[_Entry] = []
        with telemetry.consuming(f"{self.kind}.job", [m.headers for m in msgs], worker=self.id,
                                 subject=msgs[0].subject, jobs=len(msgs)):
            try:
                for msg in msgs:
                    entry = await self._admit(msg)
                    if entry is not None:
                        entries.append(entry)
                if entries:
                    await self._run(entries)
            finally:
                for entry in entries:
                    self.cancels.unwatch(entry.job.task_id, entry.cancel)

    async def _admit(self, msg) -> "_Entry | None":
        """Decode a job and watch for its cancellation; None when it is already settled here."""
        attempt = msg.metadata.num_delivered
        try:
            job = decode(msg.data, Job)
        except Exception as e:  # noqa: BLE001 - a message we cannot read can never succeed
            log.error("dropping undecodable job %s: %s", msg.metadata.sequence.stream, e)
            await msg.term()
            return None
        if (attempt > 1 or job.stage > 0) and await self._finished(job.task_id):
            await msg.ack()
            return None
        cancel = self.cancels.watch(job.task_id)
        if cancel.is_set():  # a cancelled task never starts (or goes on to its next stage)
            self.cancels.unwatch(job.task_id, cancel)
            await self._cancelled(msg, job.task_id)
            return None
        return _Entry(msg, job, attempt, cancel)

    async def _run(self, entries: list["_Entry"]) -> None:
        batch = [e.job.task_id for e in entries] if len(entries) > 1 else []
        announced = asyncio.gather(*(bus.publish_event(self.js, Started(
            task_id=e.job.task_id, at=time.time(), worker=self.id, attempt=e.attempt, stage=e.job.stage,
            stage_name=e.job.stage_name, batch=batch), e.job.stage, e.attempt) for e in entries))
        heartbeats = [asyncio.create_task(self._keep_alive(e.msg)) for e in entries]
        started = time.perf_counter()
        try:
            outcomes = await self._work(entries, announced)
        except Interrupted:
            for e in entries:
                if e.cancel.is_set():
                    await self._cancelled(e.msg, e.job.task_id)
                else:
                    log.info("task %s interrupted by shutdown; handing it back", e.job.task_id)
                    await e.msg.nak()
        except JobError as error:
            for e in entries:
                await self._fail(e.msg, e.job.task_id, str(error))
        except Exception as error:  # noqa: BLE001 - transient until max_deliver
            log.exception("tasks %s failed", [e.job.task_id for e in entries])
            for e in entries:
                if e.attempt >= self.config.worker.max_deliver:
                    await self._fail(e.msg, e.job.task_id, f"failed after {e.attempt} attempts: {error}")
                else:
                    await e.msg.nak(delay=2.0 ** e.attempt)
        else:
            for e, results in zip(entries, outcomes):
                if e.cancel.is_set() and batch:  # a batch is not stopped for one of its tasks
                    await self._cancelled(e.msg, e.job.task_id)
                    continue
                if results is not None:
                    await bus.publish_event(self.js, Completed(
                        task_id=e.job.task_id, at=time.time(), worker=self.id, images=results,
                        elapsed_s=time.perf_counter() - started))
                    metrics.TASKS_COMPLETED.labels(metrics.kind(e.job.spec)).inc()
                await e.msg.ack()  # should the ack be lost, the redelivery finds the task finished
        finally:
            for heartbeat in heartbeats:
                heartbeat.cancel()

    async def _work(self, entries: list["_Entry"], announced) -> list:
        """The jobs' outcomes. Their `started` events are published meanwhile (one connection keeps
        them ahead of any later event) and must be stored before anything else is done with the jobs."""
        try:
            if len(entries) == 1:
                e = entries[0]
                return [await self.work(e.job, e.attempt, e.cancel)]
            return await self.work_batch([e.job for e in entries], [e.attempt for e in entries],
                                         [e.cancel for e in entries])
        finally:
            await announced

    @staticmethod
    def device_done() -> None:
        """Called by `work` once the job no longer needs the device: the next job may start while this
        one's images are encoded and stored."""
        SLOT.get()()

    async def publish_next_stage(self, job: Job, inputs: list[str]) -> None:
        """Hand the task to the worker of its next stage (its queue depends on the stage)."""
        nxt = Job(task_id=job.task_id, spec=job.spec, priority=job.priority, stage=job.stage + 1, inputs=inputs,
                  key=job.key)
        await bus.publish(self.js, job_subject(nxt), encode(nxt),
                          telemetry.headers({"Nats-Msg-Id": subjects.job_msg_id(job.task_id, nxt.stage)}))

    async def execute(self, fn, stopped: tuple[type, ...] = (), failed: tuple[type, ...] = ()):
        """Run blocking work in the executor: `stopped` errors mean Interrupted, `failed` ones JobError."""
        try:
            return await self.loop.run_in_executor(self.executor, telemetry.in_context(fn))
        except stopped:
            raise Interrupted() from None
        except failed as e:
            raise JobError(str(e)) from None

    async def encode(self, fn):
        """Run `fn` (image encoding) on the encoder thread, so the device's thread can go on."""
        return await self.loop.run_in_executor(self.encoder, telemetry.in_context(fn))

    async def load_image(self, key: str):
        """An input image from storage; a missing one fails the job."""
        data = await self.storage.get(key)
        if data is None:
            raise JobError(f"input image {key} is missing from storage")
        return Image.open(io.BytesIO(data))

    def hold(self, msg) -> None:
        """Keep a fetched job for later: heartbeat it so it is not redelivered meanwhile."""
        self.held.append(msg)
        self.holding[id(msg)] = asyncio.create_task(self._keep_alive(msg))

    async def hand_on(self, job: Job, encoded: list[bytes]) -> None:
        """Store a stage's images and publish the task's next stage, which starts from them."""
        keys = []
        for i, data in enumerate(encoded):
            keys.append(storage.stage_key(job.task_id, job.stage_name, i))
            await self.storage.put(keys[-1], data)
        await self.publish_next_stage(job, keys)

    async def _cancelled(self, msg, task_id: str) -> None:
        """Partial work is dropped; the job is acked so it is never redelivered."""
        await bus.publish_event(self.js, Cancelled(task_id=task_id, at=time.time(), worker=self.id))
        await msg.ack_sync()

    async def _fail(self, msg, task_id: str, error: str) -> None:
        await bus.publish_event(self.js, Failed(task_id=task_id, at=time.time(), error=error, worker=self.id))
        try:
            metrics.TASKS_FAILED.labels(metrics.kind(decode(msg.data, Job).spec)).inc()
        except Exception:  # noqa: BLE001 - an undecodable job has no kind to count under
            metrics.TASKS_FAILED.labels("unknown").inc()
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

    def publish_progress(self, progress: Progress) -> None:
        """Thread-safe: called from the work thread."""
        data = encode(progress)
        self.loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(self.nc.publish(subjects.progress(progress.task_id), data)))

    async def store_results(self, job: Job, encoded: list[bytes], seeds: list[int], size: tuple[int, int],
                            fmt) -> list[ImageResult]:
        results, token = [], storage.new_token()
        for i, (data, seed) in enumerate(zip(encoded, seeds)):
            key = storage.result_key(token, i, fmt.extension)
            await self.storage.put(key, data)
            results.append(ImageResult(key=key, content_type=fmt.content_type, width=size[0], height=size[1],
                                       seed=seed))
        return results

    async def _on_max_deliveries(self, msg) -> None:
        """A job whose every attempt died with its worker: end it failed and drop it from the queue."""
        try:
            seq = decode(msg.data, subjects.MaxDeliveriesAdvisory).stream_seq
            stored = await self.js.get_msg(subjects.JOBS, seq)
            job = decode(stored.data, Job)
        except Exception as e:  # noqa: BLE001 - already gone
            log.debug("max-deliveries advisory not handled: %s", e)
            return
        attempts = self.config.worker.max_deliver
        await bus.publish_event(self.js, Failed(
            task_id=job.task_id, at=time.time(),
            error=f"no worker finished the job: {attempts} attempt(s) ended with the worker crashing or stopping"))
        await self.js.delete_msg(subjects.JOBS, seq)


async def serve(config: Config, name: str, make_worker) -> None:
    """A worker service's whole life: connect, ensure the streams, open storage, run until stopped, drain."""
    nc = await bus.connect(config, name)
    try:
        await bus.ensure(nc.jetstream(), config)
        worker = make_worker(nc)
        worker.storage = await storage.open_storage(config, worker.js)
        await worker.run(stop_event())
    finally:
        await nc.drain()
