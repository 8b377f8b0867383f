"""The worker runtime's pure logic, without servers: what each outcome means for the task and its
message, which errors are worth another attempt, the retry backoff, step progress with a fake clock,
which queued jobs join a batch, and which worker's stage table handles each stage of every task."""

from types import SimpleNamespace

import pytest

from schemas import subjects
from schemas.codec import encode
from schemas.events import ImageResult
from schemas.jobs import HiresFix, Img2Img, Inpaint, Job, Txt2Img, Upscale, batch_key, job_subject, stages
from services.config import ProgressConfig, load
from services.gpu_worker import batching
from services.worker.outcomes import (
    BadInput,
    Cancelled,
    Done,
    HandBack,
    HandedOn,
    PipelineError,
    Rejected,
    RetryAfter,
    RetryPolicy,
    Settle,
    Stopped,
    classify,
    decide,
)
from services.worker.progress import StepReporter

POLICY = RetryPolicy(max_deliver=3, first_delay_s=2.0, max_delay_s=60.0)
IMAGE = ImageResult(key="results/t/0.png", content_type="image/png", width=64, height=64, seed=1)


def txt2img(**fields) -> Txt2Img:
    return Txt2Img(**{"model": "demo", "prompt": "x", "width": 64, "height": 64, "steps": 2,
                      "guidance_scale": 7.5, "seed": 1, **fields})


@pytest.mark.parametrize("outcome, attempt, settle, event, delay", [
    (Done([IMAGE]), 1, Settle.ACK, "completed", None),
    (HandedOn(), 1, Settle.ACK, None, None),  # the next stage's worker ends the task
    (Cancelled(), 1, Settle.ACK, "cancelled", None),
    (HandBack(), 1, Settle.NAK, None, None),  # the worker stops: another takes it at once
    (Rejected("the mask is empty"), 1, Settle.TERM, "failed", None),
    (RetryAfter(4.0, "connection lost"), 2, Settle.NAK, None, 4.0),
    (RetryAfter(8.0, "connection lost"), 3, Settle.TERM, "failed", None),  # attempts used up
])
def test_each_outcome_publishes_its_event_then_settles_its_message(outcome, attempt, settle, event, delay):
    decision = decide(outcome, attempt, POLICY)
    assert (decision.settle, decision.event, decision.delay_s) == (settle, event, delay)
    if event == "completed":
        assert decision.images == [IMAGE]
    if event == "failed":
        assert decision.error in ("the mask is empty", "failed after 3 attempts: connection lost")


def test_a_pipeline_bug_fails_at_once_and_out_of_memory_is_retried():
    shape = PipelineError(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    assert classify(shape, 1, POLICY, cancelled=False) == Rejected(
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    assert isinstance(classify(PipelineError(TypeError("bad arg")), 1, POLICY, False), Rejected)
    oom = PipelineError(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert classify(oom, 1, POLICY, False) == RetryAfter(2.0, "CUDA out of memory. Tried to allocate 2.00 GiB")
    # Outside the pipeline (storing images, NATS) any error may pass: retried.
    assert isinstance(classify(ConnectionResetError("peer gone"), 2, POLICY, False), RetryAfter)
    assert isinstance(classify(TypeError("from a client library"), 1, POLICY, False), RetryAfter)
    assert classify(BadInput("input image k is missing"), 1, POLICY, False) == Rejected("input image k is missing")
    assert classify(Stopped(), 1, POLICY, cancelled=True) == Cancelled()
    assert classify(Stopped(), 1, POLICY, cancelled=False) == HandBack()


def test_retry_backoff_doubles_from_the_configured_delay_up_to_its_cap(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("worker:\n  retry_delay_s: 0.5\n  retry_delay_max_s: 3\n  max_deliver: 9\n")
    policy = RetryPolicy.from_config(load(path, {}).worker)
    assert [policy.delay(attempt) for attempt in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert decide(RetryAfter(policy.delay(8), "x"), 8, policy).settle is Settle.NAK
    assert [RetryPolicy().delay(a) for a in (1, 2)] == [2.0, 4.0]  # the defaults: as before


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_step_progress_is_throttled_and_a_due_preview_rides_on_the_next_message_sent():
    clock, sent = FakeClock(), []
    config = ProgressConfig(min_interval_s=1.0, preview_every=2)
    reporter = StepReporter("t", 10, 1, (64, 64), config, sent.append, clock, stage=1, stages=2, span=(0.5, 1.0))
    previews = []

    def preview():
        previews.append(True)
        return "data", 8, 8

    clock.now += 2.0
    reporter.report(1, 10, preview)  # step 2 of 10 after 2 s: 8 s to go
    assert [(m.step, m.eta_s, m.fraction, m.preview) for m in sent] == [(2, 8.0, 0.6, "data")]
    clock.now += 0.5
    reporter.report(3, 10, preview)  # within min_interval_s: dropped, its preview too
    clock.now += 0.5
    reporter.report(4, 10, preview)  # step 5: sent, with the preview due since step 4
    assert [m.step for m in sent] == [2, 5] and sent[-1].preview == "data" and len(previews) == 2
    assert sent[-1].stage == 1 and sent[-1].stages == 2 and sent[-1].attempt == 1
    clock.now += 1.0
    reporter.report(19, 20)  # schedulers that call back twice per step: index 19 of 20 is step 10
    assert sent[-1].step == 10 and sent[-1].eta_s == 0 and sent[-1].fraction == 1.0


def msg(job: Job | bytes) -> SimpleNamespace:
    return SimpleNamespace(data=job if isinstance(job, bytes) else encode(job))


def test_only_jobs_with_the_same_batch_key_join_a_batch_up_to_its_image_limit():
    first = Job(task_id="a", spec=txt2img(num_images=2))
    same = [Job(task_id=t, spec=txt2img(prompt=t, num_images=2)) for t in ("b", "c", "d")]
    other_size = Job(task_id="e", spec=txt2img(width=128))
    hires = Job(task_id="f", spec=txt2img(hires=HiresFix(scale=2, upscaler="Latent", steps=2,
                                                         denoising_strength=0.5, width=128, height=128)))
    assert batch_key(first) == batch_key(same[0]) != batch_key(other_size)
    assert batch_key(hires) is None and batch_key(Job(task_id="g", spec=txt2img(), stage=1)) is None
    others = [msg(same[0]), msg(other_size), msg(b"not a job"), msg(same[1]), msg(same[2])]
    joining, rest = batching.split(first, others, max_images=6)
    assert joining == [others[0], others[3]]  # 2 + 2 + 2 images: the third same-key job waits
    assert rest == [others[1], others[2], others[4]]


def test_batching_is_on_with_cuda_unless_the_config_says():
    config = load(None, {}).worker.batching
    assert batching.enabled(config, "cuda:0") and not batching.enabled(config, "cpu")
    assert batching.enabled(load(None, {"DIFFBUS_WORKER__BATCHING__ENABLED": "true"}).worker.batching, "cpu")


def test_every_stage_of_every_task_has_a_handler_on_the_worker_its_queue_feeds():
    from services.gpu_worker.pipelines import ModelRegistry
    from services.gpu_worker.service import GpuWorker
    from services.upscaler.models import UpscalerRegistry
    from services.upscaler.service import UpscalerWorker

    config = load(None, {})
    runtime = SimpleNamespace(config=config)
    gpu, upscaler = GpuWorker(runtime, ModelRegistry(config)), UpscalerWorker(runtime, UpscalerRegistry(config))
    hires = {upscaler: HiresFix(scale=2, upscaler=upscaler, steps=2, denoising_strength=0.5, width=128, height=128)
             for upscaler in ("Latent", "Lanczos")}
    specs = [txt2img(), txt2img(hires=hires["Latent"]), txt2img(hires=hires["Lanczos"]),
             Img2Img(model="demo", prompt="x", width=64, height=64, steps=2, guidance_scale=7, seed=1,
                     init_image="inputs/k", strength=0.5),
             Inpaint(model="demo", prompt="x", width=64, height=64, steps=2, guidance_scale=7, seed=1,
                     init_image="inputs/k", mask_image="inputs/m"),
             Upscale(image="inputs/k", scale=2, upscaler="Lanczos", width=128, height=128)]
    routes = []
    for spec in specs:
        for index, stage in enumerate(stages(spec)):
            job = Job(task_id="t", spec=spec, stage=index)
            worker = upscaler if job_subject(job) == subjects.upscale_job(job.priority) else gpu
            assert stage.name in worker.stages, (spec, stage)
            routes.append((stage.name, worker.kind))
    assert sorted(set(routes)) == [("generate", "gpu"), ("refine", "gpu"), ("upscale", "upscale")]


async def test_a_pull_that_comes_back_empty_from_a_queue_that_held_more_is_tried_again_not_idled():
    """A loaded cluster can let a short pull expire with jobs waiting. The worker keeps the queue
    ready and pulls again waiting longer, instead of idling until the next poll (a second of a GPU
    lost per job); a queue that said it was empty is given up as before."""
    from services.config import WorkerConfig
    from services.worker.queues import FETCH_S, Queues

    class Pull:  # a pull subscription's answers, in order: a job with `pending` behind it, or nothing
        def __init__(self, *answers):
            self.answers, self.waits = list(answers), []

        async def fetch(self, batch, timeout):
            self.waits.append(timeout)
            pending = self.answers.pop(0)
            if pending is None:
                raise TimeoutError
            return [SimpleNamespace(metadata=SimpleNamespace(num_pending=pending))]

    queues = Queues(None, None, WorkerConfig())
    queues.pulls = [Pull(5, None, 4, None)]
    queues.ready = {0}
    assert (await queues.next()).metadata.num_pending == 5
    assert await queues.next() is None and queues.ready == {0}  # expired with 5 behind: still ready
    assert (await queues.next()).metadata.num_pending == 4
    assert queues.pulls[0].waits[1] == FETCH_S and queues.pulls[0].waits[2] > FETCH_S  # waited as if rung
    queues.pending[0] = 0
    assert await queues.next() is None and queues.ready == set()  # said empty, came back empty: idle
