"""The gpu worker's stage handlers: `generate` (txt2img, img2img, inpaint, and a latent hires fix's
both passes) and `refine` (a hires fix's second pass after the upscaler), and a batch of compatible
txt2img jobs as one pipeline call."""

import contextlib
import time

from PIL import Image

from schemas.jobs import LATENT_UPSCALER, Img2Img, Inpaint, Job, OutputFormat, stage_span, stages
from services import imaging
from services.observability import metrics, telemetry
from services.worker import Done, HandedOn, Runtime, Work
from services.worker.outcomes import Outcome
from services.worker.progress import StepReporter

from . import generate
from .loras import LoraFolder
from .pipelines import ModelRegistry


@contextlib.contextmanager
def denoising(model: str, images: int, stage: str):
    """The denoise span and its metrics (seconds per call, images made)."""
    with telemetry.span("denoise", model=model, images=images, stage=stage):
        started = time.perf_counter()
        yield
        metrics.DENOISE_SECONDS.labels(model).observe(time.perf_counter() - started)
        metrics.IMAGES.labels(model).inc(images)


class Generation:
    def __init__(self, runtime: Runtime, registry: ModelRegistry, loras: LoraFolder):
        self.runtime, self.registry, self.loras = runtime, registry, loras

    def reporter(self, work: Work, stage: int, total_steps: int, size: tuple[int, int]) -> StepReporter:
        spec = work.job.spec
        return StepReporter(work.job.task_id, total_steps, work.attempt, size, self.runtime.config.progress,
                            self.runtime.publish_progress, stage=stage, stage_name=stages(spec)[stage].name,
                            stages=len(stages(spec)), span=stage_span(spec, stage))

    @staticmethod
    def on_step(reporter: StepReporter, work: Work) -> generate.StepCallback:
        def step(index: int, timesteps: int, latents) -> bool:
            reporter.step(index, timesteps, latents)
            return work.should_stop()
        return step

    async def inputs(self, job: Job):
        """The images a job starts from, as `generate` takes them."""
        spec, load = job.spec, self.runtime.load_image
        if job.stage_name == "refine":
            return [await load(key) for key in job.inputs]
        if isinstance(spec, Inpaint):
            return await load(spec.init_image), None if spec.mask_image is None else await load(spec.mask_image)
        if isinstance(spec, Img2Img) and spec.more_init_images:
            return [await load(key) for key in (spec.init_image, *spec.more_init_images)]
        if isinstance(spec, Img2Img):
            return await load(spec.init_image)
        return None

    async def generate(self, work: Work) -> Outcome:
        spec, inputs = work.job.spec, await self.inputs(work.job)
        hires = getattr(spec, "hires", None)
        base = self.reporter(work, work.job.stage, generate.total_steps(spec), (spec.width, spec.height))

        def generate_with(pipe) -> list[Image.Image]:
            if isinstance(spec, Inpaint):
                return generate.inpaint(pipe, spec, *inputs, self.on_step(base, work))
            if hires is None or hires.upscaler != LATENT_UPSCALER:
                return generate.run(pipe, spec, inputs, self.on_step(base, work))
            # a latent hires fix runs both its passes here
            latents = generate.run(pipe, spec, None, self.on_step(base, work), output_type="latent")
            refine = self.reporter(work, 1, generate.refine_steps(hires), (hires.width, hires.height))
            return generate.refine(pipe, spec, generate.upscale_latents(pipe, latents, hires),
                                   self.on_step(refine, work))

        finishes = work.job.last_stage or (hires is not None and hires.upscaler == LATENT_UPSCALER)
        return await self._finish(work, await self._denoise(work, generate_with), finishes)

    async def refine(self, work: Work) -> Outcome:
        spec, inputs = work.job.spec, await self.inputs(work.job)
        hires = spec.hires
        reporter = self.reporter(work, work.job.stage, generate.refine_steps(hires), (hires.width, hires.height))
        pictures = await self._denoise(
            work, lambda pipe: generate.refine(pipe, spec, inputs, self.on_step(reporter, work)))
        return await self._finish(work, pictures, work.job.last_stage)

    async def _denoise(self, work: Work, generate_with) -> list[Image.Image]:
        spec = work.job.spec

        def run() -> list[Image.Image]:
            pipe = self.registry.pipeline(spec.model)
            with self.loras.applied(pipe, spec.loras), denoising(spec.model, spec.num_images, work.job.stage_name):
                return generate_with(pipe)

        pictures = await self.runtime.run_pipeline(run)
        work.device_done()  # the next job denoises while these images are encoded and stored
        return pictures

    async def _finish(self, work: Work, pictures: list[Image.Image], finishes: bool) -> Outcome:
        """Store the task's images, or (lossless) hand them to the next stage."""
        job, spec = work.job, work.job.spec
        if not finishes:
            encoded = await self.runtime.encode(lambda: [imaging.encode(p, OutputFormat.PNG) for p in pictures])
            await self.runtime.hand_on(job, encoded)
            return HandedOn()
        encoded = await self.runtime.encode(lambda: [
            imaging.encode(p, spec.output_format, imaging.parameters(spec, seed), spec.quality)
            for p, seed in zip(pictures, spec.seeds)])
        hires = getattr(spec, "hires", None)
        size = (hires.width, hires.height) if hires else (spec.width, spec.height)
        return Done(await self.runtime.store_results(job, encoded, spec.seeds, size, spec.output_format))

    async def batch(self, works: list[Work]) -> list[Outcome]:
        """Compatible txt2img jobs (equal schemas.jobs.batch_key) as one call; one task's cancel does
        not stop the others (it is dropped at the end)."""
        specs = [w.job.spec for w in works]
        offsets = [sum(spec.num_images for spec in specs[:i]) for i in range(len(specs) + 1)]
        reporters = [self.reporter(w, 0, w.job.spec.steps, (w.job.spec.width, w.job.spec.height)) for w in works]

        def on_step(index: int, timesteps: int, latents) -> bool:
            for reporter, start in zip(reporters, offsets):
                reporter.step(index, timesteps, None if latents is None else latents[start:start + 1])
            return self.runtime.stopping

        def run() -> list[Image.Image]:
            pipe = self.registry.pipeline(specs[0].model)
            with self.loras.applied(pipe, specs[0].loras), denoising(specs[0].model, offsets[-1], "batch"):
                return generate.run_batch(pipe, specs, on_step)

        pictures = await self.runtime.run_pipeline(run)
        works[0].device_done()
        seeds = [(spec, seed) for spec in specs for seed in spec.seeds]
        encoded = await self.runtime.encode(lambda: [
            imaging.encode(p, spec.output_format, imaging.parameters(spec, seed), spec.quality)
            for p, (spec, seed) in zip(pictures, seeds)])
        return [Done(await self.runtime.store_results(w.job, encoded[offsets[i]:offsets[i + 1]], w.job.spec.seeds,
                                                      (w.job.spec.width, w.job.spec.height), w.job.spec.output_format))
                for i, w in enumerate(works)]
