"""API errors: raised anywhere in a handler, rendered once by the middleware in the dialect's shape."""

from collections.abc import Callable

import nats.errors
from aiohttp import web
from pydantic import BaseModel


class ApiError(Exception):
    def __init__(self, status: int, detail, headers: dict | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def invalid(loc: list, msg: str, type_: str = "value_error") -> ApiError:
    """A 422 in FastAPI's `detail` list shape, for one field."""
    return ApiError(422, [{"loc": ["body", *loc], "msg": msg, "type": type_}])


# Renders (status, detail) as a dialect's error body. Dialects register theirs by path prefix.
Renderer = Callable[[int, object], dict]
RENDERERS = web.AppKey("error_renderers", list[tuple[str, Renderer]])


def fastapi_shape(status: int, detail) -> dict:
    return {"detail": detail}


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        status, detail, headers = e.status, e.detail, e.headers
    except (nats.errors.Error, TimeoutError) as e:  # NATS lost or failing over: worth a retry
        status, detail, headers = 503, f"job queue unavailable, retry shortly: {type(e).__name__}", {"Retry-After": "1"}
    except web.HTTPRequestEntityTooLarge as e:
        status, detail, headers = 413, e.text, None
    except web.HTTPException as e:
        if e.status < 400:
            raise
        status, detail, headers = e.status, e.reason, None
    render = next((r for prefix, r in request.app[RENDERERS] if request.path.startswith(prefix)),
                  fastapi_shape)
    return web.json_response(render(status, detail), status=status, headers=headers)


class ValidationItem(BaseModel):
    loc: list[str | int]  # ["body", field, ...]
    msg: str
    type: str


class FastApiError(BaseModel):
    """The error body of the native dialect (and FastAPI's): a message, or for 422 one item per field."""

    detail: str | list[ValidationItem]
