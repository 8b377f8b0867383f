"""Routes outside any dialect: health and stored files."""

from aiohttp import web

from services import storage

from .context import CTX
from .errors import ApiError

CACHE_FOREVER = "public, max-age=31536000, immutable"  # keys never change content


async def health(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response({"status": "ok", "model_loaded": bool(ctx.workers.loaded_models())})


async def file(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    data = await request.app[CTX].tasks.storage.get(key)
    if data is None:
        raise ApiError(404, "File not found")
    return web.Response(body=data, content_type=storage.content_type(key),
                        headers={"Cache-Control": CACHE_FOREVER})


def file_url(base_url: str, key: str) -> str:
    return f"{base_url}/files/{key}"


def register(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/api/health", health)
    app.router.add_get("/files/{key:.+}", file)
