"""The AUTOMATIC1111 dialect's image tools: png-info, extra-single-image and extra-batch-images (upscales,
each a task waited for)."""

import asyncio
import base64
import uuid

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import png_info as png_info_reply
from . import request as request_layer
from . import seed_examples, validation
from .a1111 import DOCS, PREFIX, principal, run_to_end
from .a1111_replies import ExtrasBatchReply, ExtrasReply
from .auth import Principal
from .context import CTX
from .errors import ApiError, invalid
from .replies import json_reply


@DOCS.route("POST", PREFIX + "png-info", "Read the generation parameters an image carries",
            body=png_info_reply.PngInfoRequest, response=png_info_reply.PngInfo, errors=(401, 422),
            examples=seed_examples.PNG_INFO)
async def png_info(request: web.Request) -> web.Response:
    """POST /sdapi/v1/png-info {image}: {info, items, parameters}."""
    principal(request)
    return await png_info_reply.reply(request)


class ExtrasRequest(BaseModel):
    """A1111's ExtrasBaseRequest (upscaling part; face restoration and a second upscaler are refused)."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: int = Field(0, ge=0, le=1)  # 0: by upscaling_resize, 1: to upscaling_resize_w × _h
    upscaling_resize: float = Field(2.0, ge=1)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0


class ExtrasSingleRequest(ExtrasRequest):
    image: str


class BatchImage(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchRequest(ExtrasRequest):
    imageList: list[BatchImage] = Field(min_length=1)  # noqa: N815 - A1111's name


def _extras_unsupported(req: ExtrasRequest) -> None:
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(req, field):
            raise invalid([field], "face restoration is not supported by diffbus")
    if req.upscaler_2 not in ("None", "") and req.extras_upscaler_2_visibility:
        raise invalid(["upscaler_2"], "a second upscaler is not supported by diffbus")


async def _upscale(ctx, who: Principal, req: ExtrasRequest, value: str, field: str) -> tuple[bytes, str]:
    """One upscale task, waited for: (image bytes, html_info)."""
    image = await validation.input_image(value, field, ctx.config)
    upscaler = "Lanczos" if req.upscaler_1 in ("None", "") else req.upscaler_1
    scale = req.upscaling_resize if req.resize_mode == 0 else max(
        req.upscaling_resize_w / image.width, req.upscaling_resize_h / image.height)
    size = (req.upscaling_resize_w, req.upscaling_resize_h) if req.resize_mode == 1 else None
    spec = await request_layer.build_upscale(ctx, request_layer.UpscaleRequest(
        image=image, scale=scale, upscaler=upscaler, size=size,
        names={"upscaler": ["upscaler_1"], "scale": ["upscaling_resize"]}))
    size = spec.width, spec.height
    record = await run_to_end(ctx, who, spec, uuid.uuid4().hex)
    data = await ctx.tasks.storage.get(record.images[0].key) if record.images else None
    if data is None:
        raise ApiError(500, record.error_message or "the upscale did not finish")
    return data, f"<p>{upscaler}, {size[0]}×{size[1]}</p>"


async def _extras_request(request: web.Request, model: type[ExtrasRequest]):
    try:
        req = model.model_validate(await validation.read_json(request))
    except ValidationError as e:
        raise ApiError(422, validation.detail(e)) from None
    _extras_unsupported(req)
    return req


@DOCS.route("POST", PREFIX + "extra-single-image", "Upscale one image, answered when done",
            body=ExtrasSingleRequest, response=ExtrasReply, errors=(401, 422, 429, 500, 504),
            examples=seed_examples.A1111_EXTRAS)
async def extra_single_image(request: web.Request) -> web.Response:
    """POST /sdapi/v1/extra-single-image: an upscale task, waited for; {html_info, image}."""
    ctx = request.app[CTX]
    who = principal(request)
    req = await _extras_request(request, ExtrasSingleRequest)
    data, html = await _upscale(ctx, who, req, req.image, "image")
    return json_reply(ExtrasReply(html_info=html, image=base64.b64encode(data).decode()))


@DOCS.route("POST", PREFIX + "extra-batch-images", "Upscale several images, answered when all are done",
            body=ExtrasBatchRequest, response=ExtrasBatchReply, errors=(401, 422, 429, 500, 504))
async def extra_batch_images(request: web.Request) -> web.Response:
    """POST /sdapi/v1/extra-batch-images {imageList: [{data, name}], …}: one upscale task per image
    (at most limits.max_images), run side by side; {html_info, images}."""
    ctx = request.app[CTX]
    who = principal(request)
    req = await _extras_request(request, ExtrasBatchRequest)
    if len(req.imageList) > ctx.config.limits.max_images:
        raise invalid(["imageList"], f"at most {ctx.config.limits.max_images} images")
    for i, item in enumerate(req.imageList):  # every input checked before any task starts
        await validation.input_image(item.data, f"imageList.{i}.data", ctx.config)
    done = await asyncio.gather(*(_upscale(ctx, who, req, item.data, f"imageList.{i}.data")
                                  for i, item in enumerate(req.imageList)))
    return json_reply(ExtrasBatchReply(html_info=done[0][1],
                                       images=[base64.b64encode(data).decode() for data, _ in done]))


def register(app: web.Application) -> None:
    for path, handler in (("png-info", png_info), ("extra-single-image", extra_single_image),
                          ("extra-batch-images", extra_batch_images)):
        app.router.add_post(PREFIX + path, handler)
