"""gpu_worker: generation jobs for the models it serves. A hires fix with a model upscaler stores the
first images and hands the task to the upscaler service; its refine stage comes back here."""

import time

from schemas import subjects
from schemas.subjects import PRIORITY_ORDER
from schemas.workers import WorkerAnnouncement
from services.observability import metrics
from services.config import Config
from services.worker import Runtime, WorkerService, serve

from . import batching
from .loras import LoraFolder
from .pipelines import ModelRegistry
from .stages import Generation


class GpuWorker(WorkerService):
    kind = "gpu"
    fair_shared = True  # its queues serve keys in turn when quotas.fair_sharing is on

    def __init__(self, runtime: Runtime, registry: ModelRegistry):
        self.runtime, self.registry = runtime, registry
        self.loras = LoraFolder(runtime.config.lora_path)
        generation = Generation(runtime, registry, self.loras)
        self.stages = {"generate": generation.generate, "refine": generation.refine}
        self.run_batch = generation.batch
        self.batching = batching.enabled(runtime.config.worker.batching, registry.device)

    def queues(self) -> list[tuple[str, str]]:
        return [(subjects.generate_job(priority, model.name), subjects.gpu_durable(model.name, priority))
                for priority in PRIORITY_ORDER for model in self.registry.served]

    async def prepare(self) -> None:
        await self.runtime.on_device(self.registry.describe)
        for model in self.registry.served[:self.runtime.config.worker.max_loaded_models]:
            await self.runtime.on_device(self.registry.pipeline, model.name)

    def announcement(self, worker_id: str) -> WorkerAnnouncement:
        return WorkerAnnouncement(
            worker=worker_id, kind=self.kind, models_served=[m.name for m in self.registry.served],
            models_loaded=self.registry.loaded, device=self.registry.device, at=time.time(),
            loras=self.loras.files(), models=self.registry.described)

    async def gather(self, msg) -> list:
        if not self.batching:
            return [msg]
        return await batching.gather(self.runtime.queues, self.runtime.config.worker.batching, msg)


async def run(config: Config) -> None:
    registry = ModelRegistry(config)
    metrics.track_gpu_memory(registry.device)
    await serve(config, "gpu-worker", GpuWorker.kind, lambda runtime: GpuWorker(runtime, registry))
