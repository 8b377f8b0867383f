"""What the API says about itself: /openapi.json with Swagger UI at /docs and ReDoc at /redoc,
/asyncapi.json for the NATS side, and the web page at / (services/api/static/).

Swagger UI and ReDoc are served from static/vendor/, which `make install` fills from the npm
registry (tools/web-assets.sh): no CDN at run time."""

import json
from pathlib import Path

from aiohttp import web

from . import apidoc, asyncapi
from .context import CTX
from .errors import ApiError

STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "vendor"
DOCS = apidoc.Docs("docs", "This API's own description, and the web page.", security=())
HTML = {"type": "string", "contentMediaType": "text/html"}
JSON = {"type": "object"}
CACHE = web.AppKey("openapi_cache", dict)

SWAGGER_UI = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diffbus API: Swagger UI</title>
<link rel="icon" href="static/vendor/swagger-ui/favicon-32x32.png">
<link rel="stylesheet" href="static/vendor/swagger-ui/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                             persistAuthorization: true, displayRequestDuration: true});
</script></body></html>
"""

REDOC = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diffbus API: ReDoc</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body { margin: 0; padding: 0; }</style></head>
<body><redoc spec-url="openapi.json"></redoc>
<script src="static/vendor/redoc/redoc.standalone.js"></script></body></html>
"""


def description(config) -> str:
    limits = config.limits
    return (
        "A self-hosted Stable Diffusion job service on NATS JetStream. Four dialects share one job queue: "
        "the native API (`/api/v1`), AUTOMATIC1111's (`/sdapi/v1`), FooocusAPI's (`/v1/engine/generate/`, "
        "`/tasks`) and sd_work_manager's (`/api/Task/*`).\n\n"
        f"**Keys**: `{config.api.key_header}` header on every route but health, files, `/ping` and these docs; "
        "A1111 routes also take HTTP Basic with the key as the password; sd_work_manager's take its "
        "`X-API-SECRET`. Each key sees only its own tasks.\n\n"
        f"**Limits on this server**: up to {limits.max_width}×{limits.max_height} pixels (multiples of 8, at "
        f"least {limits.min_size}), {limits.max_steps} steps, {limits.max_images} images a request, guidance up "
        f"to {limits.max_guidance_scale:g}; models: {', '.join(m.name for m in config.models)} (default "
        f"{config.default_model}).\n\n"
        "**Live progress**: Server-Sent Events at `/api/v1/tasks/{task_id}/events`, a WebSocket at `/api/v1/ws`, "
        "or NATS subjects (see [/asyncapi.json](/asyncapi.json)). A web page to try it all is at [/](/).")


@DOCS.route("GET", "/openapi.json", "This document (OpenAPI 3.1)", response=JSON)
async def openapi_json(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    server = ctx.base_url(request)
    cache = request.app[CACHE]
    if server not in cache:
        cache[server] = json.dumps(apidoc.document(request.app, ctx.config, server, description(ctx.config)))
    return web.Response(text=cache[server], content_type="application/json")


@DOCS.route("GET", "/asyncapi.json", "The NATS subjects, streams and messages (AsyncAPI 3.0)", response=JSON)
async def asyncapi_json(request: web.Request) -> web.Response:
    return web.json_response(asyncapi.document(request.app[CTX].config))


def _page(html: str, needs: Path, what: str):
    async def handler(request: web.Request) -> web.Response:
        if not needs.exists():
            raise ApiError(503, f"{what} is not installed on this server: run `make install` "
                                "(tools/web-assets.sh fetches it)")
        return web.Response(text=html, content_type="text/html")
    return handler


swagger_ui = DOCS.route("GET", "/docs", "Swagger UI", response=HTML, media_type="text/html", errors=(503,))(
    _page(SWAGGER_UI, VENDOR / "swagger-ui" / "swagger-ui-bundle.js", "Swagger UI"))
redoc = DOCS.route("GET", "/redoc", "ReDoc", response=HTML, media_type="text/html", errors=(503,))(
    _page(REDOC, VENDOR / "redoc" / "redoc.standalone.js", "ReDoc"))


@DOCS.route("GET", "/", "The web page: generate with live previews", response=HTML, media_type="text/html")
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def register(app: web.Application) -> None:
    app[CACHE] = {}
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/asyncapi.json", asyncapi_json)
    app.router.add_get("/docs", swagger_ui)
    app.router.add_get("/redoc", redoc)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
