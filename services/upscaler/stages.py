"""The upscaler's one stage: an upscale job on its own, or the middle stage of a hires fix (whose
images go back to the gpu workers, losslessly, for the second pass)."""

from schemas.jobs import OutputFormat, Upscale, stage_span, stages
from services import imaging
from services.worker import Done, HandedOn, Runtime, Work
from services.worker.outcomes import Outcome
from services.worker.progress import StepReporter

from .models import UpscalerRegistry
from .upscale import upscale


class Upscaling:
    def __init__(self, runtime: Runtime, registry: UpscalerRegistry):
        self.runtime, self.registry = runtime, registry

    async def upscale(self, work: Work) -> Outcome:
        job, spec = work.job, work.job.spec
        if isinstance(spec, Upscale):
            keys, upscaler, size, fmt = [spec.image], spec.upscaler, (spec.width, spec.height), spec.output_format
            quality = spec.quality
        else:  # the middle stage of a hires fix
            hires = spec.hires
            keys, upscaler, size, fmt = job.inputs, hires.upscaler, (hires.width, hires.height), OutputFormat.PNG
            quality = 100
        pictures = [await self.runtime.load_image(key) for key in keys]
        on_tile = self._progress(work, len(pictures), size)

        def run() -> list:
            settings = self.runtime.config.upscaler
            return [upscale(picture, size, upscaler, self.registry, settings,
                            lambda done, total, i=i: on_tile(i, done, total))
                    for i, picture in enumerate(pictures)]

        upscaled = await self.runtime.run_pipeline(run, rejects=(ValueError, OSError))
        work.device_done()
        encoded = await self.runtime.encode(lambda: [imaging.encode(image, fmt, quality=quality) for image in upscaled])
        if job.last_stage:
            return Done(await self.runtime.store_results(job, encoded, [0] * len(encoded), size, fmt))
        await self.runtime.hand_on(job, encoded)
        return HandedOn()

    def _progress(self, work: Work, pictures: int, size: tuple[int, int]):
        """on_tile(picture, tiles done, tiles in all) -> stop?; the reporter is made at the first tile,
        when the tile count is known."""
        job, reporters = work.job, []

        def on_tile(i: int, done: int, total: int) -> bool:
            if not reporters:
                reporters.append(StepReporter(
                    job.task_id, total * pictures, work.attempt, size, self.runtime.config.progress,
                    self.runtime.publish_progress, stage=job.stage, stage_name=job.stage_name,
                    stages=len(stages(job.spec)), span=stage_span(job.spec, job.stage)))
            step, steps = i * total + done, total * pictures
            if step < steps or not job.last_stage:  # the task's last tile: `completed` says it
                reporters[0].report(step - 1, steps)
            return work.should_stop()
        return on_tile
