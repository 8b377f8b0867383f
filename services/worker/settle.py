"""From a fetched message to a settled one: admit the job (decode it, skip it if its task already
ended or was cancelled), announce its start, heartbeat it while its handler runs, then publish what
its outcome means (outcomes.decide) and only then ack, nak or term it."""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from schemas import subjects
from schemas.codec import decode
from schemas.events import Cancelled, Completed, Failed
from schemas.jobs import Job

from .. import bus
from ..observability import metrics
from ..task.events import TaskEvents
from . import outcomes
from .outcomes import BadInput, Decision, Outcome, RetryPolicy, Settle, Stopped, classify, decide

log = logging.getLogger("diffbus.worker")

TERMINAL_EVENTS = (Completed.name(), Failed.name(), Cancelled.name())


@dataclass
class Work:
    """One job in a handler's hands."""

    msg: object
    job: Job
    attempt: int
    cancel: threading.Event  # set when the task is asked to stop (read between steps)
    events: TaskEvents
    release: Callable[[], None]  # frees the worker's device slot (once)
    stopping: Callable[[], bool]  # the worker is stopping

    def should_stop(self) -> bool:
        """For step callbacks (any thread): stop between steps?"""
        return self.stopping() or self.cancel.is_set()

    def device_done(self) -> None:
        """The job no longer needs the device: the next job may start while this one's images are
        encoded and stored."""
        self.release()


class Settler:
    """Settles every message of one worker."""

    def __init__(self, nc, js, worker_id: str, cancels, policy: RetryPolicy, ack_wait_s: float):
        self.nc, self.js, self.worker_id, self.cancels = nc, js, worker_id, cancels
        self.policy, self.ack_wait_s = policy, ack_wait_s

    def events(self, task_id: str, job: Job | None = None, worker: bool = True) -> TaskEvents:
        return TaskEvents(self.nc, task_id, js=self.js, worker=self.worker_id if worker else None,
                          kind=None if job is None else metrics.kind(job.spec))

    async def admit(self, msg, release, stopping) -> Work | None:
        """A job to run, watched for its cancellation; None when it was settled here already."""
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
        work = Work(msg, job, attempt, cancel, self.events(job.task_id, job), release, stopping)
        if cancel.is_set():  # a cancelled task never starts (or goes on to its next stage)
            self.cancels.unwatch(job.task_id, cancel)
            await self._settle(work, decide(outcomes.Cancelled(), attempt, self.policy), 0.0)
            return None
        return work

    async def _finished(self, task_id: str) -> bool:
        for event in TERMINAL_EVENTS:
            if await bus.last_event(self.js, task_id, event) is not None:
                return True
        return False

    async def run(self, works: list[Work], handle) -> None:
        """Announce the jobs' start, run `handle(works)` (their outcomes) with heartbeats, settle each."""
        batch = [w.job.task_id for w in works] if len(works) > 1 else []
        announced = asyncio.gather(*(w.events.started(attempt=w.attempt, stage=w.job.stage,
                                                      stage_name=w.job.stage_name, batch=batch) for w in works))
        heartbeats = [asyncio.create_task(bus.keep_alive(w.msg, self.ack_wait_s)) for w in works]
        started = time.perf_counter()
        try:
            results = await self._outcomes(works, handle, announced)
            for work, outcome in zip(works, results):
                if batch and work.cancel.is_set():  # a batch is not stopped for one of its tasks
                    outcome = outcomes.Cancelled()
                await self._settle(work, decide(outcome, work.attempt, self.policy), time.perf_counter() - started)
        finally:
            for heartbeat in heartbeats:
                heartbeat.cancel()
            for work in works:
                self.cancels.unwatch(work.job.task_id, work.cancel)

    async def _outcomes(self, works: list[Work], handle, announced) -> list[Outcome]:
        """The jobs' outcomes. Their `started` events are published meanwhile (one connection keeps
        them ahead of any later event) and must be stored before anything else is done with the jobs."""
        try:
            return await handle(works)
        except Exception as error:  # noqa: BLE001 - classified: the same outcome for every job of a batch
            if not isinstance(error, (Stopped, BadInput)):
                log.error("tasks %s failed", [w.job.task_id for w in works], exc_info=error)
            return [classify(error, w.attempt, self.policy, w.cancel.is_set()) for w in works]
        finally:
            await announced

    async def _settle(self, work: Work, decision: Decision, elapsed_s: float) -> None:
        """Publish the decision's event, then settle the message (so a lost ack only means a redelivery
        that finds the task finished)."""
        match decision.event:
            case "completed":
                await work.events.completed(decision.images, elapsed_s)
            case "failed":
                await work.events.failed(decision.error)
            case "cancelled":
                await work.events.cancelled()
        match decision.settle:
            case Settle.ACK if decision.event == "cancelled":
                await work.msg.ack_sync()  # never redelivered
            case Settle.ACK:
                await work.msg.ack()
            case Settle.NAK:
                if decision.delay_s is None:
                    log.info("task %s handed back (the worker is stopping)", work.job.task_id)
                await work.msg.nak(delay=decision.delay_s)
            case Settle.TERM:
                await work.msg.term()

    async def on_max_deliveries(self, msg) -> None:
        """A job whose every attempt died with its worker: end it failed and drop it from the queue."""
        try:
            seq = decode(msg.data, subjects.MaxDeliveriesAdvisory).stream_seq
            job = decode((await self.js.get_msg(subjects.JOBS, seq)).data, Job)
        except Exception as e:  # noqa: BLE001 - already gone
            log.debug("max-deliveries advisory not handled: %s", e)
            return
        await self.events(job.task_id, job, worker=False).failed(
            f"no worker finished the job: {self.policy.max_deliver} attempt(s) ended with the worker "
            "crashing or stopping")
        await self.js.delete_msg(subjects.JOBS, seq)
