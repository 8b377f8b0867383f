"""upscaler: upscale jobs (`jobs.upscale.*`), on their own or as the middle stage of a hires fix,
whose images it hands back to the gpu workers for the second pass."""

import time

from schemas import subjects
from schemas.subjects import PRIORITY_ORDER
from schemas.workers import WorkerAnnouncement
from services.config import Config
from services.worker import Runtime, WorkerService, serve

from .models import UpscalerRegistry
from .stages import Upscaling


class UpscalerWorker(WorkerService):
    kind = "upscale"

    def __init__(self, runtime: Runtime, registry: UpscalerRegistry):
        self.registry = registry
        self.stages = {"upscale": Upscaling(runtime, registry).upscale}
        # While one job resizes, others wait on storage and NATS round trips.
        self.concurrency = runtime.config.upscaler.concurrency

    def queues(self) -> list[tuple[str, str]]:
        return [(subjects.upscale_job(p), subjects.upscale_durable(p)) for p in PRIORITY_ORDER]

    def announcement(self, worker_id: str) -> WorkerAnnouncement:
        return WorkerAnnouncement(worker=worker_id, kind=self.kind, models_served=self.registry.names,
                                  models_loaded=self.registry.loaded, device="", at=time.time())


async def run(config: Config) -> None:
    registry = UpscalerRegistry(config)
    await serve(config, "upscaler", UpscalerWorker.kind, lambda runtime: UpscalerWorker(runtime, registry))
