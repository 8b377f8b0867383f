"""The runtime both workers (gpu_worker, upscaler) share. A worker service names its queues and a
stage table (stage name -> handler); a handler takes a `Work` (one job) and returns an outcome:
`Done(images)` or `HandedOn()`, or raises `BadInput` or `Stopped`. The runtime pulls (high priority
first), watches cancels, heartbeats, and settles each job in one place (outcomes.decide):

    queues.py    pull consumers, doorbell, held jobs, heartbeats
    cancels.py   the tasks asked to stop
    outcomes.py  outcomes, error classification (transient or deterministic), retry backoff, settle decision
    settle.py    admit a message, announce its start, run its handler, publish the outcome, ack/nak/term
    runtime.py   the loop, and what handlers may use: the device thread, the encoder, storage, progress
    progress.py  StepReporter: throttled progress with ETA and previews
"""

from .outcomes import BadInput, Done, HandedOn, Stopped
from .runtime import Runtime, WorkerService, serve
from .settle import Work

__all__ = ["BadInput", "Done", "HandedOn", "Runtime", "Stopped", "Work", "WorkerService", "serve"]
