"""Routes outside any dialect: health, metrics and stored files."""

from aiohttp import web

from services import metrics, storage

from .context import CTX
from .errors import ApiError
from .health import Health

HEALTH = web.AppKey("health", Health)

CACHE_FOREVER = "public, max-age=31536000, immutable"  # keys never change content


async def health(request: web.Request) -> web.Response:
    """Each dependency (NATS, storage, projector, workers); 503 when the API cannot accept work."""
    status, body = await request.app[HEALTH].report()
    return web.json_response(body, status=status)


async def prometheus(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text; queue gauges are read from JetStream now."""
    ctx = request.app[CTX]
    await metrics.refresh_queues(ctx.tasks.js, ctx.config)
    for kind in ("gpu", "upscale"):
        metrics.WORKERS_ANNOUNCED.labels(kind).set(sum(w.kind == kind for w in ctx.workers.live()))
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def file(request: web.Request) -> web.Response:
    key = request.match_info["key"]
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
