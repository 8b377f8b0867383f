"""Request bodies validated with pydantic at the edge; failures become FastAPI's 422 `detail` list."""

import asyncio
from typing import TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ValidationError

from schemas.jobs import LATENT_UPSCALER
from services import webhook_targets
from services.config import Config

from .errors import ApiError, invalid
from .inputs import ImageInputError, InputImage, decode_image

M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request) -> object:
    try:
        return await request.json()
    except ValueError:
        raise invalid([], "Request body is not valid JSON", "json_invalid") from None


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


async def input_image(value: str, field: str, config: Config) -> InputImage:
    try:
        if len(value) <= INLINE_DECODE_CHARS:
            return decode_image(value, config.limits)
        return await asyncio.to_thread(decode_image, value, config.limits)
    except ImageInputError as e:
        raise invalid([field], str(e)) from None


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


def check_at_most(value: float | None, config: Config, limit_name: str) -> float | None:
    limit = getattr(config.limits, limit_name)
    if value is not None and value > limit:
        raise ValueError(f"must be at most {limit}")
    return value


async def webhook_target(url: str, field: str, config: Config) -> None:
    """422 for webhook targets in private or special networks (unless config allows them)."""
    try:
        await webhook_targets.check_url(url, webhook_targets.networks(config.notifier.allowed_networks))
    except webhook_targets.BlockedTarget as e:
        raise invalid([field], f"webhook target refused: {e}") from None


def check_upscaler(name: str, config: Config, allow_latent: bool) -> str:
    names = ([LATENT_UPSCALER] if allow_latent else []) + config.upscaler_names
    if name not in names:
        raise ValueError(f"unknown upscaler; one of {names}")
    return name


def check_callback_url(value: str | None) -> str | None:
    if value is None:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(value) > 2048:
        raise ValueError("must be an http(s) URL")
    return value
