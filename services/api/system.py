"""Routes outside any dialect: health and stored files."""

import msgspec
from aiohttp import web

from services import storage

from . import apidoc
from .context import CTX
from .errors import ApiError, FastApiError

CACHE_FOREVER = "public, max-age=31536000, immutable"  # keys never change content
DOCS = apidoc.Docs("system", "Health and stored files: no key needed.", security=(), error_model=FastApiError)


class Health(msgspec.Struct):
    status: str  # "ok"
    model_loaded: bool  # a live worker has a model loaded


IMAGE = {"type": "string", "contentMediaType": "image/*", "description": "the file's bytes"}


@DOCS.route("GET", "/health", "Service status", response=Health)
@DOCS.route("GET", "/api/health", "Service status", response=Health)
async def health(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response({"status": "ok", "model_loaded": bool(ctx.workers.loaded_models())})


@DOCS.route("GET", "/files/{key}", "A stored image (results and inputs)", response=IMAGE, media_type="image/*",
            errors=(404,), description="Result URLs point here when images live in the JetStream object store.")
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
