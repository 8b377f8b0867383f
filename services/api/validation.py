"""Request bodies validated with pydantic at the edge; failures become FastAPI's 422 `detail` list."""

import asyncio
import json
import math
from typing import TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ValidationError

from services import egress
from services.config import Config

from .errors import ApiError, invalid
from . import inputs
from .context import CTX
from .inputs import ImageInputError, InputImage, decode_image

M = TypeVar("M", bound=BaseModel)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def read_json(request: web.Request) -> object:
    """The body as JSON (UTF-8, -16 or -32), refused with a 422 unless it is sane all through: nested
    at most limits.max_json_depth deep, numbers finite, strings valid Unicode (no lone surrogates)."""
    try:
        body = json.loads(await request.read(), parse_constant=_no_constant)
    except RecursionError:
        raise invalid([], "Request body is nested too deeply", "json_invalid") from None
    except ValueError:
        raise invalid([], "Request body is not valid JSON", "json_invalid") from None
    check_sane(body, request.app[CTX].config.limits.max_json_depth)
    return body


def check_sane(body: object, max_depth: int) -> None:
    """Walk a parsed body (without recursion): depth, finite numbers, valid Unicode."""
    pending: list[tuple[object, list]] = [(body, [])]
    while pending:
        value, loc = pending.pop()
        if isinstance(value, dict | list):
            if len(loc) >= max_depth:
                raise invalid(loc, f"nested more than {max_depth} deep", "json_invalid")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and not _valid_text(key):
                    raise invalid(loc, "a key is not valid Unicode (a lone surrogate)", "string_unicode")
                pending.append((item, [*loc, key]))
        elif isinstance(value, str) and not _valid_text(value):
            raise invalid(loc, "not valid Unicode (a lone surrogate)", "string_unicode")
        elif isinstance(value, float) and not math.isfinite(value):
            raise invalid(loc, "numbers must be finite", "finite_number")


def _valid_text(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def detail(error: ValidationError) -> list[dict]:
    return [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in error.errors(include_url=False, include_context=False, include_input=False)]


async def parse(request: web.Request, model: type[M], config: Config) -> M:
    body = await read_json(request)
    try:
        return model.model_validate(body, context=config)
    except ValidationError as e:
        raise ApiError(422, detail(e)) from None


INLINE_DECODE_CHARS = 64 * 1024  # smaller images decode faster than a hop to a thread and back


async def input_image(value: str, field: str | list, config: Config) -> InputImage:
    """A checked input image (header first, then decoded: off the event loop unless small)."""
    loc = field if isinstance(field, list) else [field]
    if not isinstance(value, str):
        raise invalid(loc, "expected a base64 image or a data URI")
    try:
        if len(value) <= INLINE_DECODE_CHARS:
            return decode_image(value, config.limits)
        return await asyncio.to_thread(decode_image, value, config.limits)
    except ImageInputError as e:
        raise invalid(loc, str(e)) from None


async def resized_image(value: str, field: str | list, width: int, height: int, mode: int,
                        config: Config) -> InputImage:
    """An init image checked, then resized to width×height (A1111's resize modes) in a thread. The
    target must be a valid size first (width and height are checked here)."""
    for axis, size in (("width", width), ("height", height)):
        try:
            check_multiple_of_8(size, config, axis)
        except ValueError as e:
            raise invalid([axis], str(e)) from None
    if mode not in inputs.RESIZE_MODES:
        raise invalid(["resize_mode"], f"resize_mode must be one of {sorted(inputs.RESIZE_MODES)}")
    image = await input_image(value, field, config)
    return await asyncio.to_thread(inputs.resized, image, width, height, mode)


async def grown_mask(image: InputImage, erode_or_dilate: int) -> InputImage:
    """A mask with its white grown or shrunk (in a thread)."""
    if not erode_or_dilate:
        return image
    return await asyncio.to_thread(inputs.grown_mask, image, erode_or_dilate)


def check_multiple_of_8(value: int | None, config: Config, axis: str) -> int | None:
    """For width/height validators: a multiple of 8 within the configured limits."""
    if value is None:
        return value
    limits = config.limits
    top = limits.max_width if axis == "width" else limits.max_height
    if value % 8:
        raise ValueError(f"{axis} must be a multiple of 8")
    if not limits.min_size <= value <= top:
        raise ValueError(f"{axis} must be between {limits.min_size} and {top}")
    return value


async def webhook_target(url: str, field: str, config: Config) -> None:
    """422 for webhook targets in private or special networks (unless config allows them)."""
    try:
        await egress.check_url(url, egress.networks(config.notifier.allowed_networks))
    except egress.BlockedTarget as e:
        raise invalid([field], f"webhook target refused: {e}") from None


def check_callback_url(value: str | None) -> str | None:
    if value is None:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(value) > 2048:
        raise ValueError("must be an http(s) URL")
    return value
