"""Reading the generation parameters an image carries: one reply shape, served by the native
(/api/v1/png-info) and the A1111 (/sdapi/v1/png-info) routes alike."""

import io

import msgspec
from aiohttp import web
from PIL import Image
from pydantic import BaseModel

from services import imaging

from . import validation
from .context import CTX
from .replies import json_reply


class PngInfoRequest(BaseModel):
    image: str  # data URI or base64


class PngInfo(msgspec.Struct):
    info: str  # the `parameters` text, A1111's format
    parameters: dict  # the same, parsed
    items: dict[str, str]  # other text chunks


async def reply(request: web.Request) -> web.Response:
    """{info, parameters, items} of the image in the request body (A1111's png-info shape)."""
    config = request.app[CTX].config
    req = await validation.parse(request, PngInfoRequest, config)
    image = await validation.input_image(req.image, "image", config)
    with Image.open(io.BytesIO(image.data)) as img:
        text = imaging.read_parameters(img)
        items = {k: v for k, v in img.info.items() if isinstance(v, str) and k != "parameters"}
    return json_reply(PngInfo(info=text or "", parameters=imaging.parse(text) if text else {}, items=items))
