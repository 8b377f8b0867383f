"""Routes outside any dialect: health, metrics and stored files."""

import re
from typing import Literal

import msgspec
from aiohttp import web

from services import storage
from services.observability import metrics

from . import apidoc
from .context import CTX
from .errors import ApiError, FastApiError
from .health import Health

HEALTH = web.AppKey("health", Health)

FILE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,16})?\.[a-z]{3,4}")
CACHE_FOREVER = "public, max-age=31536000, immutable"  # keys never change content
DOCS = apidoc.Docs("system", "Health, metrics and stored files: no key needed.", security=(),
                   error_model=FastApiError)


class HealthReport(msgspec.Struct):
    status: Literal["ok", "degraded", "unavailable"]  # degraded: accepts work, but tasks may wait
    model_loaded: bool  # a live worker has a model loaded
    dependencies: dict[str, dict]  # nats, storage, projector, workers: each {ok, ...}


IMAGE = {"type": "string", "contentMediaType": "image/*", "description": "the file's bytes"}


@DOCS.route("GET", "/health", "Service status", response=HealthReport, errors=(503,))
@DOCS.route("GET", "/api/health", "Service status", response=HealthReport, errors=(503,))
async def health(request: web.Request) -> web.Response:
    """Each dependency (NATS, storage, projector, workers); 503 when the API cannot accept work."""
    status, body = await request.app[HEALTH].report()
    return web.json_response(body, status=status)


@DOCS.route("GET", "/metrics", "Prometheus metrics", response={"type": "string"}, media_type="text/plain")
async def prometheus(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text; queue gauges are read from JetStream now."""
    ctx = request.app[CTX]
    await metrics.refresh_queues(ctx.tasks.js, ctx.config)
    await ctx.tasks.quotas.refresh_metrics([ctx.config.sdwm_owner] if ctx.config.sdwm.secret else [])
    for kind in ("gpu", "upscale"):
        metrics.WORKERS_ANNOUNCED.labels(kind).set(sum(w.kind == kind for w in ctx.workers.live()))
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


@DOCS.route("GET", "/files/{key}", "A stored image (results and inputs)", response=IMAGE, media_type="image/*",
            errors=(404,), description="Result URLs point here when images live in the JetStream object store.")
async def file(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    if not FILE_KEY.fullmatch(key) or not key.startswith(storage.SERVED_PREFIXES):
        raise ApiError(404, "File not found")
    data = await request.app[CTX].tasks.storage.get(key)
    if data is None:
        raise ApiError(404, "File not found")
    return web.Response(body=data, content_type=storage.content_type(key),
                        headers={"Cache-Control": CACHE_FOREVER})


def register(app: web.Application) -> None:
    app[HEALTH] = Health(app[CTX])
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/api/health", health)
    app.router.add_get("/files/{key:.+}", file)
