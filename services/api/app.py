"""The aiohttp application: routes registered by one module per dialect."""

from aiohttp import web

from . import a1111, docs, errors, fooocus, native, sdwm, system
from .context import CTX, ApiContext
from .tracing import tracing_middleware


def create_app(ctx: ApiContext) -> web.Application:
    app = web.Application(client_max_size=ctx.config.api.max_body_bytes,
                          middlewares=[tracing_middleware, errors.error_middleware])
    app[CTX] = ctx
    app[errors.RENDERERS] = []
    for dialect in (system, native, a1111, fooocus, sdwm):
        dialect.register(app)
    docs.register(app)  # after the dialects: it describes the routes they registered
    return app
