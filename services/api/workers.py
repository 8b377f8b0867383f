"""What the workers announce (the `workers` KV bucket), watched so /health answers from memory."""

import asyncio
import logging
import time

from schemas import subjects
from schemas.codec import decode
from schemas.workers import ModelInfo, WorkerAnnouncement
from services.config import ModelConfig

log = logging.getLogger("diffbus.api")
FALLBACK_SIZE = 512  # while no worker serving the model has said what it is


class WorkerDirectory:
    def __init__(self, js, stale_after_s: float):
        self.js = js
        self.stale_after_s = stale_after_s
        self.workers: dict[str, WorkerAnnouncement] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        kv = await self.js.key_value(subjects.WORKERS_BUCKET)
        self._watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await self._watcher.stop()

    async def restart(self) -> None:
        """Watch the bucket anew (after a nats-server restart made it again: the old watch follows a
        bucket that is gone). Announcements already known stay until they are stale."""
        try:
            await self.stop()
        except Exception as e:  # noqa: BLE001 - the old watch's consumer went with the server
            log.debug("old workers watch: %r", e)
        await self.start()

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is None:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.workers.pop(entry.key, None)
                continue
            try:
                self.workers[entry.key] = decode(entry.value, WorkerAnnouncement)
            except Exception as e:  # noqa: BLE001 - one bad entry must not stop the watch
                log.warning("bad worker announcement %s: %s", entry.key, e)

    def live(self) -> list[WorkerAnnouncement]:
        now = time.time()
        return [w for w in self.workers.values() if now - w.at < self.stale_after_s]

    def model_info(self, name: str) -> ModelInfo | None:
        """What a live worker serving `name` read from its files (family, default size, hash)."""
        return next((w.models[name] for w in self.live() if name in w.models), None)

    def default_size(self, model: ModelConfig) -> tuple[int, int]:
        """A request without a size gets config's, else the model family's native size (as a worker
        serving it announced), else 512×512."""
        info = self.model_info(model.name)
        return (model.width or (info.width if info else FALLBACK_SIZE),
                model.height or (info.height if info else FALLBACK_SIZE))

    def loaded_models(self) -> set[str]:
        return {m for w in self.live() for m in w.models_loaded}
