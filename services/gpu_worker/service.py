"""gpu_worker: generation jobs for the models it serves. A hires fix with a model upscaler stores the
first images and hands the task to the upscaler service; its refine stage comes back here."""

import contextlib
import logging
import threading
import time

from PIL import Image

from schemas import subjects
from schemas.events import ImageResult
from schemas.codec import decode
from schemas.jobs import LATENT_UPSCALER, Img2Img, Inpaint, Job, OutputFormat, batch_key, stage_span, stages
from schemas.subjects import PRIORITY_ORDER
from schemas.workers import WorkerAnnouncement
from services import bus, imaging, metrics, telemetry
from services.config import Config
from services.worker.jobloop import JobWorker, serve
from services.worker.progress import StepReporter

from . import generate
from .loras import LoraFolder
from .pipelines import ModelRegistry

log = logging.getLogger("diffbus.gpu_worker")

GENERATION_ERRORS = ((generate.Stopped,), (generate.GenerationError,))  # (stopped, failed) for execute()


class GpuWorker(JobWorker):
    kind = "gpu"

    def __init__(self, config: Config, nc, registry: ModelRegistry):
        super().__init__(config, nc)
        self.registry = registry
        self.loras = LoraFolder(config.lora_path)

    def queue_subjects(self) -> list[tuple[str, str]]:
        return [(subjects.generate_job(priority, model.name), subjects.gpu_durable(model.name, priority))
                for priority in PRIORITY_ORDER for model in self.registry.served]

    async def prepare(self) -> None:
        await self.loop.run_in_executor(self.executor, self.registry.describe)
        for model in self.registry.served[:self.config.worker.max_loaded_models]:
            await self.loop.run_in_executor(self.executor, self.registry.pipeline, model.name)

    def announcement(self) -> WorkerAnnouncement:
        return WorkerAnnouncement(
            worker=self.id, kind=self.kind, models_served=[m.name for m in self.registry.served],
            models_loaded=self.registry.loaded, device=self.registry.device, at=time.time(),
            loras=self.loras.files(), models=self.registry.described)

    def reporter(self, job: Job, stage: int, total_steps: int, attempt: int, size: tuple[int, int]) -> StepReporter:
        return StepReporter(job.task_id, total_steps, attempt, size, self.config.progress, self.publish_progress,
                            stage=stage, stage_name=stages(job.spec)[stage].name, stages=len(stages(job.spec)),
                            span=stage_span(job.spec, stage))

    def on_step(self, reporter: StepReporter, cancel: threading.Event):
        def step(index: int, timesteps: int, latents) -> bool:
            reporter.step(index, timesteps, latents)
            return self.stopping or cancel.is_set()
        return step

    async def work(self, job: Job, attempt: int, cancel: threading.Event) -> list[ImageResult] | None:
        spec = job.spec
        hires = getattr(spec, "hires", None)
        if job.stage_name == "refine":
            inputs = [await self.load_image(key) for key in job.inputs]
        elif isinstance(spec, Inpaint):
            inputs = (await self.load_image(spec.init_image),
                      None if spec.mask_image is None else await self.load_image(spec.mask_image))
        elif isinstance(spec, Img2Img) and spec.more_init_images:
            inputs = [await self.load_image(key) for key in (spec.init_image, *spec.more_init_images)]
        elif isinstance(spec, Img2Img):
            inputs = await self.load_image(spec.init_image)
        else:
            inputs = None
        final_size = (hires.width, hires.height) if hires else (spec.width, spec.height)
        latent_hires = hires is not None and hires.upscaler == LATENT_UPSCALER
        finishes = job.last_stage or latent_hires  # a latent hires fix runs both its stages here
        base = self.reporter(job, job.stage, generate.total_steps(spec), attempt, (spec.width, spec.height))

        def run() -> list[Image.Image] | object:
            pipe = self.registry.pipeline(spec.model)
            with self.loras.applied(pipe, spec.loras), denoising(spec.model, spec.num_images, job.stage_name):
                return generate_with(pipe)

        def generate_with(pipe) -> list[Image.Image] | object:
            if job.stage_name == "refine":
                refine = self.reporter(job, job.stage, generate.refine_steps(hires), attempt, final_size)
                return generate.refine(pipe, spec, inputs, self.on_step(refine, cancel))
            if isinstance(spec, Inpaint):
                return generate.inpaint(pipe, spec, *inputs, self.on_step(base, cancel))
            if hires is None:
                return generate.run(pipe, spec, inputs, self.on_step(base, cancel))
            if latent_hires:
                latents = generate.run(pipe, spec, None, self.on_step(base, cancel), output_type="latent")
                refine = self.reporter(job, 1, generate.refine_steps(hires), attempt, final_size)
                return generate.refine(pipe, spec, generate.upscale_latents(pipe, latents, hires),
                                       self.on_step(refine, cancel))
            return generate.run(pipe, spec, None, self.on_step(base, cancel))

        def encode() -> list[bytes]:
            if not finishes:
                return [imaging.encode(p, OutputFormat.PNG) for p in pictures]  # lossless, for the next stage
            return [imaging.encode(p, spec.output_format, imaging.parameters(spec, seed), spec.quality)
                    for p, seed in zip(pictures, spec.seeds)]

        pictures = await self.execute(run, *GENERATION_ERRORS)
        self.device_done()  # the next job denoises while these images are encoded and stored
        encoded = await self.encode(encode)
        if finishes:
            return await self.store_results(job, encoded, spec.seeds, final_size, spec.output_format)
        await self.hand_on(job, encoded)
        return None

    @property
    def batching(self) -> bool:
        enabled = self.config.worker.batching.enabled
        return self.registry.device.startswith("cuda") if enabled is None else enabled

    async def gather(self, msg) -> list:
        """With batching on, compatible jobs waiting behind `msg` in its queue join it."""
        if not self.batching:
            return [msg]
        settings = self.config.worker.batching
        try:
            key, images = batch_key(first := decode(msg.data, Job)), first.spec.num_images
        except Exception:  # noqa: BLE001 - the loop will deal with an unreadable job
            return [msg]
        if key is None or images >= settings.max_images:
            return [msg]
        more = await bus.fetch(self.queues[self.queue_of[msg.subject]], settings.max_images - images,
                               max(settings.max_wait_ms, 1) / 1000)
        batch = [msg]
        for other in more:
            try:
                job = decode(other.data, Job)
            except Exception:  # noqa: BLE001
                job = None
            if job is not None and batch_key(job) == key and images + job.spec.num_images <= settings.max_images:
                batch.append(other)
                images += job.spec.num_images
            else:
                self.hold(other)
        return batch

    async def work_batch(self, jobs: list[Job], attempts: list[int],
                         cancels: list[threading.Event]) -> list[list[ImageResult]]:
        specs = [job.spec for job in jobs]
        offsets = [sum(spec.num_images for spec in specs[:i]) for i in range(len(specs) + 1)]
        reporters = [self.reporter(job, 0, job.spec.steps, attempt, (job.spec.width, job.spec.height))
                     for job, attempt in zip(jobs, attempts)]

        def on_step(index: int, timesteps: int, latents) -> bool:
            for reporter, start in zip(reporters, offsets):
                reporter.step(index, timesteps, None if latents is None else latents[start:start + 1])
            return self.stopping  # one task's cancel does not stop the others: it is dropped at the end

        def run() -> list[Image.Image]:
            pipe = self.registry.pipeline(specs[0].model)
            with self.loras.applied(pipe, specs[0].loras), denoising(specs[0].model, offsets[-1], "batch"):
                return generate.run_batch(pipe, specs, on_step)

        def encode() -> list[bytes]:
            seeds = [(spec, seed) for spec in specs for seed in spec.seeds]
            return [imaging.encode(p, spec.output_format, imaging.parameters(spec, seed), spec.quality)
                    for p, (spec, seed) in zip(pictures, seeds)]

        pictures = await self.execute(run, *GENERATION_ERRORS)
        self.device_done()
        encoded = await self.encode(encode)
        return [await self.store_results(job, encoded[offsets[i]:offsets[i + 1]], job.spec.seeds,
                                         (job.spec.width, job.spec.height), job.spec.output_format)
                for i, job in enumerate(jobs)]


@contextlib.contextmanager
def denoising(model: str, images: int, stage: str):
    """The denoise span and its metrics (seconds per call, images made)."""
    with telemetry.span("denoise", model=model, images=images, stage=stage):
        started = time.perf_counter()
        yield
        metrics.DENOISE_SECONDS.labels(model).observe(time.perf_counter() - started)
        metrics.IMAGES.labels(model).inc(images)


async def run(config: Config) -> None:
    registry = ModelRegistry(config)
    metrics.track_gpu_memory(registry.device)
    await serve(config, "gpu-worker", lambda nc: GpuWorker(config, nc, registry))

