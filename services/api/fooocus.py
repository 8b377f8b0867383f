"""The FooocusAPI dialect (seeds/fooocusapi.md): POST /v1/engine/generate/ with its three reply modes
(async task object, streamed `data:` lines, the image bytes). The request and its mapping to the neutral
request are in fooocus_request.py; the /tasks history, the model list, the stop/skip control and /ping in
fooocus_tasks.py."""

import asyncio
import base64
import json

import msgspec
from aiohttp import web
from pydantic import ValidationError

from schemas.events import TaskStatus
from schemas.queries import TaskRecord
from services.storage import FileUrl
from services.views.fooocus_task import preview_uri, task_object

from . import apidoc, fetch, live, seed_examples, validation
from . import request as request_layer
from .auth import Principal
from .context import CTX
from .errors import ApiError, FastApiError, invalid
from .fooocus_replies import IMAGE, STREAM, TaskObject
from .fooocus_request import IMAGE_FIELDS, GenerateRequest, req_params, to_request
from .inputs import InputImage
from .request import UpscaleRequest

DIALECT = "fooocus"
ACCEPTED_IMAGES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp"}
DOCS = apidoc.Docs(DIALECT, "FooocusAPI (seed fooocusapi.md): one generate route with three reply modes, and the "
                   "task history.", error_model=FastApiError)

def principal(request: web.Request) -> Principal:
    ctx = request.app[CTX]
    found = ctx.authenticate(request, ctx.config.api.key_header)
    if found is None:
        raise ApiError(401, "Invalid or missing API key")
    return found


async def _decoded(ctx, req: GenerateRequest) -> dict[str, InputImage]:
    """The request's images: fetched when URLs, decoded, the mask grown or shrunk."""
    images = {}
    for field in IMAGE_FIELDS:
        value = getattr(req, field)
        if value is None:
            continue
        if fetch.is_url(value):
            value = await fetch.image_url(value, field, ctx.config)
        images[field] = await validation.input_image(value, field, ctx.config)
    if "inpaint_mask_image_upload" in images:
        images["inpaint_mask_image_upload"] = await validation.grown_mask(
            images["inpaint_mask_image_upload"], req.inpaint_erode_or_dilate)
    return images


async def build(ctx, req: GenerateRequest, file_url: FileUrl):
    """(JobSpec, req_params): the spec to run and the request as history keeps it (images as URLs)."""
    neutral = to_request(req, await _decoded(ctx, req), ctx.config, ctx.workers.default_size)
    if isinstance(neutral, UpscaleRequest):
        spec = await request_layer.build_upscale(ctx, neutral)
    else:
        spec = await request_layer.build(ctx, neutral)
    return spec, req_params(req, spec, file_url)


@DOCS.route("POST", "/v1/engine/generate/", "Generate: a task object, a stream or the image", body=GenerateRequest,
            response=TaskObject, alternatives={"text/event-stream": STREAM, "image/*": IMAGE},
            errors=(401, 422, 429, 500, 504), examples=seed_examples.FOOOCUS_GENERATE)
@DOCS.route("POST", "/v1/engine/generate", "Generate (as /v1/engine/generate/)", body=GenerateRequest,
            response=TaskObject, alternatives={"text/event-stream": STREAM, "image/*": IMAGE},
            errors=(401, 422, 429, 500, 504))
async def generate(request: web.Request) -> web.StreamResponse:
    """POST /v1/engine/generate/, checked in FooocusAPI's order: an image type in `Accept` → the image
    itself in that format (png for a type it cannot write; image_number forced to 1); stream_output →
    `data:` lines until "Finished"; async_process → the task object now; none → the image (the seed's
    binary reply), or with fooocus.sync_reply "json" the finished task object. Image fields take base64, data URIs or http(s) URLs
    (fetched under the webhook address rules); "None" or "" means no image."""
    ctx = request.app[CTX]
    who = principal(request)
    raw = await validation.read_json(request)
    try:
        req = GenerateRequest.model_validate(raw)
    except ValidationError as e:
        raise ApiError(422, validation.detail(e)) from None
    webhook = req.webhook_url or None
    if webhook:
        try:
            validation.check_callback_url(webhook)
        except ValueError as e:
            raise invalid(["webhook_url"], str(e)) from None
        await validation.webhook_target(webhook, "webhook_url", ctx.config)
    accept = _accepted_image(request.headers.get("Accept", ""))
    binary = accept is not None or not req.stream_output and not req.async_process and \
        ctx.config.fooocus.sync_reply == "binary"
    if binary:
        req.image_number = 1
        if accept is not None:
            req.output_format = accept
    file_url = ctx.file_urls(request)
    spec, params = await build(ctx, req, file_url)
    record = await ctx.tasks.submit(spec, who, dialect=DIALECT, callback_url=webhook, request=params)
    if binary:
        return await _binary(ctx, who, record)
    if req.stream_output:  # FooocusAPI checks stream_output before async_process
        return await _stream(request, who, record, req)
    if req.async_process:
        return web.json_response(task_object(record, file_url))
    return web.json_response(await _view(ctx, await ctx.tasks.wait(record.task_id, who), file_url))


def _accepted_image(accept: str) -> str | None:
    """The output format the first image type listed in `Accept` asks for: png, jpeg or webp, and png
    for any other (as FooocusAPI); None when no image type is listed (`image/*` and `*/*` name none)."""
    for part in accept.split(","):
        kind = part.split(";")[0].strip().lower()
        if kind.startswith("image/") and kind != "image/*":
            return ACCEPTED_IMAGES.get(kind, "png")
    return None


async def _binary(ctx, who: Principal, record: TaskRecord) -> web.Response:
    record = await ctx.tasks.wait(record.task_id, who)
    if record.status is TaskStatus.FAILED:
        raise ApiError(500, record.error_message or "generation failed")
    if not record.images:
        return web.Response(status=204)  # stopped before an image was made, as FooocusAPI answers
    image = record.images[0]
    return web.Response(body=await ctx.tasks.storage.get(image.key), content_type=image.content_type)


def _line(progress: int, message: str, preview: str | None = None, images: list | None = None) -> bytes:
    # FooocusAPI's framing: each message is `data: {json}` followed by an empty `data:` line.
    text = json.dumps({"progress": progress, "preview": preview, "message": message, "images": images or []})
    return f"data: {text}\r\ndata: \r\n\r\n".encode()


# FooocusAPI writes at most one message per 0.2 s poll, and its example.html relies on it: the script
# JSON-parses each chunk it reads from the first `{` to the last `}`, so two messages arriving in one
# chunk would throw and stop its reader. diffbus keeps the same spacing.
STREAM_SPACING_S = 0.2


class _SpacedWriter:
    def __init__(self, resp: web.StreamResponse):
        self.resp, self.last = resp, float("-inf")

    async def write(self, line: bytes) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.last + STREAM_SPACING_S - loop.time()))
        await self.resp.write(line)
        self.last = loop.time()


async def _stream(request: web.Request, who: Principal, record: TaskRecord, req: GenerateRequest) -> web.StreamResponse:
    ctx = request.app[CTX]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    out_stream = _SpacedWriter(resp)
    images = "image 1/1" if req.image_number == 1 else f"images 1-{req.image_number}/{req.image_number}"
    last = 0
    async for out in live.follow(ctx, record.task_id, who, lambda r: r, previews=not req.disable_preview):
        if out is None:
            continue
        if out.name == "state":
            status = out.data.status
            message = "Waiting in queue ..." if status is TaskStatus.PENDING else "Preparing task 1/1 ..."
            await out_stream.write(_line(last, message))
        elif out.name == "progress":
            if out.data.get("status") == TaskStatus.PENDING:
                await out_stream.write(_line(0, f"Waiting in queue, {out.data.get('queue_position')} ahead ..."))
                continue
            last = min(99, int(out.data["fraction"] * 100))
            preview = preview_uri(msgspec.convert(out.data, live.Progress))
            stage = "Upscaling" if out.data.get("stage_name") == "upscale" else "Sampling step"
            await out_stream.write(_line(last, f"{stage} {out.data['step']}/{out.data['total_steps']}, {images} ...",
                                   preview))
        else:
            done: TaskRecord = out.data
            if done.status is TaskStatus.COMPLETED:
                await out_stream.write(_line(100, f"Saving {images} to system ..."))
                await out_stream.write(_line(100, "Finished", images=await results(ctx, done, req.require_base64,
                                                                              ctx.file_urls(request))))
            elif done.status is TaskStatus.FAILED:
                await out_stream.write(_line(last, f"Failed: {done.error_message}"))
            else:
                await out_stream.write(_line(last, "Stopped"))
    return resp


async def results(ctx, record: TaskRecord, as_base64: bool, file_url: FileUrl) -> list[str]:
    if not as_base64:
        return [file_url(image.key) for image in record.images]
    return [base64.b64encode(await ctx.tasks.storage.get(image.key) or b"").decode() for image in record.images]


async def _view(ctx, record: TaskRecord, file_url: FileUrl) -> dict:
    progress = await ctx.tasks.last_progress(record.task_id) if record.status is TaskStatus.PROCESSING else None
    base64_wanted = bool((record.request or {}).get("require_base64"))
    found = await results(ctx, record, True, file_url) if base64_wanted and record.images else None
    return task_object(record, file_url, progress, found)


def register(app: web.Application) -> None:
    from . import fooocus_tasks

    app.router.add_post("/v1/engine/generate/", generate)
    app.router.add_post("/v1/engine/generate", generate)
    fooocus_tasks.register(app)
