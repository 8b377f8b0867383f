"""upscaler: upscale jobs (`jobs.upscale.*`), on their own or as the middle stage of a hires fix,
whose images it hands back to the gpu workers for the second pass."""

import logging
import threading
import time


from schemas import subjects
from schemas.events import ImageResult
from schemas.jobs import Job, OutputFormat, Upscale, stage_span, stages
from schemas.subjects import PRIORITY_ORDER
from schemas.workers import WorkerAnnouncement
from services import imaging
from services.config import Config
from services.worker.jobloop import JobWorker, serve
from services.worker.progress import StepReporter

from .models import UpscalerRegistry
from .upscale import Stopped, upscale

log = logging.getLogger("diffbus.upscaler")


class UpscalerWorker(JobWorker):
    kind = "upscale"

    def __init__(self, config: Config, nc, registry: UpscalerRegistry):
        super().__init__(config, nc)
        self.registry = registry
        # While one job resizes, others wait on storage and NATS round trips.
        self.concurrency = config.upscaler.concurrency

    def queue_subjects(self) -> list[tuple[str, str]]:
        return [(subjects.upscale_job(p), subjects.upscale_durable(p)) for p in PRIORITY_ORDER]

    def announcement(self) -> WorkerAnnouncement:
        return WorkerAnnouncement(worker=self.id, kind=self.kind, models_served=self.registry.names,
                                  models_loaded=self.registry.loaded, device="", at=time.time())

    async def work(self, job: Job, attempt: int, cancel: threading.Event) -> list[ImageResult] | None:
        spec = job.spec
        if isinstance(spec, Upscale):
            keys, upscaler, size, fmt = [spec.image], spec.upscaler, (spec.width, spec.height), spec.output_format
            quality = spec.quality
        else:  # the middle stage of a hires fix
            hires = spec.hires
            keys, upscaler, size, fmt = job.inputs, hires.upscaler, (hires.width, hires.height), OutputFormat.PNG
            quality = 100
        pictures = [await self.load_image(key) for key in keys]
        reporters: list[StepReporter] = []  # made at the first tile, when the tile count is known

        def run() -> list:
            out = []
            for i, picture in enumerate(pictures):
                def on_tile(done: int, total: int, i=i) -> bool:
                    if not reporters:
                        reporters.append(StepReporter(
                            job.task_id, total * len(pictures), attempt, size, self.config.progress,
                            self.publish_progress, stage=job.stage, stage_name=job.stage_name,
                            stages=len(stages(spec)), span=stage_span(spec, job.stage)))
                    step, steps = i * total + done, total * len(pictures)
                    if step < steps or not job.last_stage:  # the task's last tile: `completed` says it
                        reporters[0].report(step - 1, steps)
                    return self.stopping or cancel.is_set()
                out.append(upscale(picture, size, upscaler, self.registry, self.config.upscaler, on_tile))
            return out

        upscaled = await self.execute(run, (Stopped,), (ValueError, OSError))
        self.device_done()
        encoded = await self.encode(lambda: [imaging.encode(image, fmt, quality=quality) for image in upscaled])
        if job.last_stage:
            return await self.store_results(job, encoded, [0] * len(encoded), size, fmt)
        await self.hand_on(job, encoded)
        return None


async def run(config: Config) -> None:
    registry = UpscalerRegistry(config)
    await serve(config, "upscaler", lambda nc: UpscalerWorker(config, nc, registry))
