"""What /health reports: each dependency the API needs, checked at most every CACHE_S seconds.

The API can accept work while NATS is connected and storage answers (503 otherwise); without a
projector or workers it still accepts (tasks wait), so those only make the status `degraded`."""

import time

import nats.errors

from schemas import subjects
from schemas.codec import encode
from schemas.queries import TaskGet
from services.storage import StorageError

CACHE_S = 2.0
PROBE_TIMEOUT_S = 1.0
PROBE_TASK = "health-probe"  # a task id no task has: the projector answers it with nothing


class Health:
    def __init__(self, ctx):
        self.ctx = ctx
        self.checked_at = -1e9
        self.storage: dict = {}
        self.projector: dict = {}

    async def _refresh(self) -> None:
        if time.monotonic() - self.checked_at < CACHE_S:
            return
        tasks = self.ctx.tasks
        backend = self.ctx.config.storage.backend
        try:
            await tasks.storage.check()
            self.storage = {"ok": True, "backend": backend}
        except StorageError as e:
            self.storage = {"ok": False, "backend": backend, "error": str(e)}
        try:
            await tasks.nc.request(subjects.TASK_GET, encode(TaskGet(task_id=PROBE_TASK)), timeout=PROBE_TIMEOUT_S)
            self.projector = {"ok": True}
        except (nats.errors.Error, TimeoutError) as e:
            self.projector = {"ok": False, "error": type(e).__name__}
        self.checked_at = time.monotonic()

    async def report(self) -> tuple[int, dict]:
        """(HTTP status, body)."""
        await self._refresh()
        nc = self.ctx.tasks.nc
        connected = nc.is_connected
        live = self.ctx.workers.live()
        kinds = sorted({w.kind for w in live})
        nats_state = {"ok": connected}
        if connected and nc.connected_url:
            nats_state["server"] = nc.connected_url.netloc
        dependencies = {
            "nats": nats_state,
            "storage": self.storage,
            "projector": self.projector,
            "workers": {"ok": bool(live), "announced": len(live),
                        "by_kind": {kind: sum(w.kind == kind for w in live) for kind in kinds}},
        }
        accepts = connected and self.storage.get("ok", False)
        if accepts and all(d["ok"] for d in dependencies.values()):
            status = "ok"
        else:
            status = "degraded" if accepts else "unavailable"
        body = {"status": status, "model_loaded": bool(self.ctx.workers.loaded_models()),
                "dependencies": dependencies}
        return (200 if accepts else 503), body
