"""The native dialect (seeds/sd_model_api.md): /api/v1/generate and /api/v1/tasks/{id}, X-API-Key."""

import io
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import msgspec
from aiohttp import web
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.events import Progress, TaskStatus, WebhookEvent
from schemas.jobs import (
    LATENT_UPSCALER,
    SCHEDULERS,
    HiresFix,
    Img2Img,
    Inpaint,
    InpaintFill,
    Outpaint,
    OutputFormat,
    Txt2Img,
    Upscale,
)
from schemas.queries import TaskRecord
from services import imaging

from . import apidoc, history, live, seed_examples, validation
from .context import CTX
from .errors import ApiError, FastApiError, invalid
from .native_replies import CancelView, ModelList, PngInfo, TaskCreated, TaskPageView, TaskView

DIALECT = "native"
SEED_RANGE = 2**32
DOCS = apidoc.Docs(DIALECT, "The native API of the seed sd_model_api.md: asynchronous tasks, polling, webhooks, "
                   "live progress.", error_model=FastApiError, schemas=(Progress,))


# Fields bounded by a configured limit (services.config.Limits), beyond their static range.
LIMITED = {"num_images": "max_images", "num_inference_steps": "max_steps", "hr_second_pass_steps": "max_steps",
           "guidance_scale": "max_guidance_scale"}


class OutpaintRequest(BaseModel):
    left: int = Field(0, ge=0, le=2048)
    top: int = Field(0, ge=0, le=2048)
    right: int = Field(0, ge=0, le=2048)
    bottom: int = Field(0, ge=0, le=2048)


class LoraRequest(BaseModel):
    name: str = Field(min_length=1)
    weight: float = Field(1.0, ge=-2, le=2)


class TaskRequest(BaseModel):
    """Fields every native task request has: where and what to be told."""

    model_config = ConfigDict(extra="ignore")

    callback_url: str | None = None
    webhook_events: list[WebhookEvent] | None = None  # default: completed, failed, cancelled

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, value: str | None) -> str | None:
        return validation.check_callback_url(value)


class GenerateRequest(TaskRequest):
    prompt: str = Field(min_length=1)  # may hold <lora:name:weight> tags
    model: str | None = None  # a configured model; default: default_model
    init_image: str | None = None  # data URI; present: img2img
    negative_prompt: str | None = None
    width: int | None = None  # txt2img only; img2img keeps the input's size
    height: int | None = None
    num_images: int = Field(1, ge=1, le=10)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    strength: float | None = Field(None, ge=0, le=1)  # img2img only
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]
    seed: int | None = Field(None, ge=-1, lt=SEED_RANGE)  # None or -1: random
    output_format: Literal["png", "jpg", "jpeg", "webp"] = "png"
    output_quality: int = Field(95, ge=1, le=100)  # JPEG and WebP
    loras: list[LoraRequest] = []
    # Inpaint (init_image + mask_image, white = repaint) and outpaint (init_image + outpaint margins)
    mask_image: str | None = None
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_fill: InpaintFill = InpaintFill.ORIGINAL
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = Field(32, ge=0, le=512)
    invert_mask: bool = False
    outpaint: OutpaintRequest | None = None
    # Hires fix (txt2img): generate, upscale by hr_scale, then an img2img pass at denoising_strength.
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1, le=4)
    hr_upscaler: str = LATENT_UPSCALER  # Latent, Lanczos, Nearest or a configured upscaler model
    hr_second_pass_steps: int = Field(0, ge=0)  # 0: num_inference_steps
    denoising_strength: float = Field(0.7, ge=0, le=1)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.context.model(value) is None:
            raise ValueError(f"unknown model; one of {[m.name for m in info.context.models]}")
        return value

    @field_validator("hr_upscaler")
    @classmethod
    def _hr_upscaler(cls, value: str, info: ValidationInfo) -> str:
        return validation.check_upscaler(value, info.context, allow_latent=True)

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int | None, info: ValidationInfo) -> int | None:
        return validation.check_multiple_of_8(value, info.context, info.field_name)

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        limit = info.context.limits.max_prompt_chars
        if value is not None and len(value) > limit:
            raise ValueError(f"at most {limit} characters")
        return value

    @field_validator(*LIMITED)
    @classmethod
    def _at_most(cls, value: float | None, info: ValidationInfo) -> float | None:
        return validation.check_at_most(value, info.context, LIMITED[info.field_name])


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def task_view(record: TaskRecord, file_url: Callable[[str], str]) -> dict:
    urls = [file_url(image.key) for image in record.images]
    return {
        "task_id": record.task_id,
        "status": record.status.value,
        "result_url": urls[0] if len(urls) == 1 else None,
        "result_urls": urls if len(urls) > 1 else None,
        "error_message": record.error_message,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        **({"webhook": msgspec.to_builtins(record.webhook)} if record.webhook else {}),
    }


HISTORY_PARAMS = (
    apidoc.Param("status", description="comma-separated statuses; default: any"),
    apidoc.Param("page", schema={"type": "integer", "minimum": 1, "default": 1}),
    apidoc.Param("page_size", schema={"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),
    apidoc.Param("start_at", description="ISO 8601 creation time, inclusive (UTC without a zone)"),
    apidoc.Param("end_at", description="ISO 8601 creation time, exclusive"),
)


SSE_EVENTS = {"type": "string", "description": (
    "Server-Sent Events: `state` (the task, as GET /api/v1/tasks/{task_id}), then `progress` (the Progress "
    "schema: step, total_steps, fraction, eta_s, preview; while pending, queue_position), then one of "
    "`completed` / `failed` / `cancelled` (the task), then the stream ends.")}
ID_PARAMS = (apidoc.Param("Idempotency-Key", "header", description="the same key returns the same task"),)


def _principal(request: web.Request):
    ctx = request.app[CTX]
    principal = ctx.authenticate(request, ctx.config.api.key_header)
    if principal is None:
        raise ApiError(401, "Invalid or missing API key")
    return principal


async def _parse(request: web.Request, model: type[TaskRequest]):
    """Authenticate, validate the body, check the webhook target: (principal, request)."""
    principal = _principal(request)
    config = request.app[CTX].config
    req = await validation.parse(request, model, config)
    if req.callback_url:
        await validation.webhook_target(req.callback_url, "callback_url", config)
    return principal, req


async def _submit(request: web.Request, spec, principal, req: TaskRequest) -> web.Response:
    record = await request.app[CTX].tasks.submit(
        spec, principal, dialect=DIALECT, callback_url=req.callback_url, webhook_events=req.webhook_events,
        idempotency_key=request.headers.get("Idempotency-Key"))
    return web.json_response({"task_id": record.task_id, "status": "pending",
                              "message": "Task created; poll /api/v1/tasks/{task_id} for the result"})


def _output_format(value: str) -> OutputFormat:
    return OutputFormat.JPEG if value == "jpg" else OutputFormat(value)


@DOCS.route("POST", "/api/v1/generate", "Generate images (txt2img, img2img, inpaint, outpaint, hires fix)",
            body=GenerateRequest, response=TaskCreated, errors=(401, 413, 422), params=ID_PARAMS,
            examples=seed_examples.NATIVE_GENERATE, description=(
                "A task is queued and its id returned at once. No init_image: txt2img; init_image (a data URI): "
                "img2img; with mask_image: inpaint; with outpaint: outpaint. Poll GET /api/v1/tasks/{task_id}, "
                "follow it live, or pass callback_url."))
async def generate(request: web.Request) -> web.Response:
    principal, req = await _parse(request, GenerateRequest)
    return await _submit(request, await build_spec(request.app[CTX], req), principal, req)


async def build_spec(ctx, req: GenerateRequest):
    """The JobSpec of a validated generate request: defaults filled in, seed chosen, images stored."""
    config = ctx.config
    model = config.model(req.model or config.default_model)
    prompt, loras = await ctx.loras.resolve(req.prompt, [(lo.name, lo.weight) for lo in req.loras], model.name)
    info = ctx.workers.model_info(model.name)
    common = dict(
        model=model.name,
        model_hash=info and info.sha256 and info.sha256[:10],
        prompt=prompt,
        loras=loras,
        quality=req.output_quality,
        negative_prompt=req.negative_prompt or "",
        num_images=req.num_images,
        steps=req.num_inference_steps or config.defaults.steps,
        guidance_scale=config.defaults.guidance_scale if req.guidance_scale is None else req.guidance_scale,
        scheduler=req.scheduler or model.scheduler,
        seed=secrets.randbelow(SEED_RANGE) if req.seed in (None, -1) else req.seed,
        output_format=_output_format(req.output_format),
    )
    inpainting = req.mask_image is not None or req.outpaint is not None
    if req.init_image is None:
        if inpainting:
            raise invalid(["init_image"], "inpaint (mask_image) and outpaint need init_image")
        default_width, default_height = ctx.workers.default_size(model)
        width, height = req.width or default_width, req.height or default_height
        return Txt2Img(width=width, height=height, hires=hires_fix(req, width, height, common["steps"], config),
                       **common)
    if req.enable_hr:
        raise invalid(["enable_hr"], "the hires fix is for txt2img; it cannot be used with init_image")
    image = await validation.input_image(req.init_image, "init_image", config)
    margins = req.outpaint or OutpaintRequest()
    width, height = image.width + margins.left + margins.right, image.height + margins.top + margins.bottom
    if min(width, height) < config.limits.min_size:
        raise invalid(["init_image"], f"image must be at least {config.limits.min_size} pixels a side")
    strength = config.defaults.strength if req.strength is None else req.strength
    if int(common["steps"] * strength) < 1 and req.inpainting_fill != InpaintFill.LATENT_NOISE:
        raise invalid(["strength"], "strength × num_inference_steps must give at least one step")
    if not inpainting:
        return Img2Img(width=image.width // 8 * 8, height=image.height // 8 * 8,
                       init_image=await ctx.tasks.store_input(image), strength=strength, **common)
    mask = None if req.mask_image is None else await validation.input_image(req.mask_image, "mask_image", config)
    if width > config.limits.max_width or height > config.limits.max_height:
        raise invalid(["outpaint"], f"the canvas would be {width}x{height}, over the limit "
                                    f"{config.limits.max_width}x{config.limits.max_height}")
    return Inpaint(width=width, height=height, init_image=await ctx.tasks.store_input(image),
                   mask_image=None if mask is None else await ctx.tasks.store_input(mask), strength=strength,
                   mask_blur=req.mask_blur, inpainting_fill=req.inpainting_fill, inpaint_full_res=req.inpaint_full_res,
                   inpaint_full_res_padding=req.inpaint_full_res_padding, invert_mask=req.invert_mask,
                   outpaint=None if req.outpaint is None else Outpaint(**req.outpaint.model_dump()), **common)


def hires_fix(req: GenerateRequest, width: int, height: int, steps: int, config) -> HiresFix | None:
    if not req.enable_hr:
        return None
    hires = HiresFix(scale=req.hr_scale, upscaler=req.hr_upscaler, steps=req.hr_second_pass_steps or steps,
                     denoising_strength=req.denoising_strength,
                     width=round(width * req.hr_scale / 8) * 8, height=round(height * req.hr_scale / 8) * 8)
    if hires.width > config.limits.max_width or hires.height > config.limits.max_height:
        raise invalid(["hr_scale"], f"the upscaled size {hires.width}x{hires.height} is over the limit "
                                    f"{config.limits.max_width}x{config.limits.max_height}")
    if int(hires.steps * hires.denoising_strength) < 1:
        raise invalid(["denoising_strength"], "denoising_strength × second-pass steps must give at least one step")
    return hires


def default_upscaler(config) -> str:
    """For dialects whose upscale names no upscaler: the first configured model, else Lanczos."""
    return config.fooocus.upscaler or next((u.name for u in config.upscalers), "Lanczos")


class UpscaleRequest(TaskRequest):
    image: str  # data URI
    scale: float = Field(2.0, ge=1)
    upscaler: str = "Lanczos"
    output_format: Literal["png", "jpg", "jpeg", "webp"] = "png"
    output_quality: int = Field(95, ge=1, le=100)

    @field_validator("upscaler")
    @classmethod
    def _upscaler(cls, value: str, info: ValidationInfo) -> str:
        return validation.check_upscaler(value, info.context, allow_latent=False)

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: float, info: ValidationInfo) -> float:
        return validation.check_at_most(value, info.context, "max_upscale_scale")


@DOCS.route("POST", "/api/v1/upscale", "Upscale an image", body=UpscaleRequest, response=TaskCreated,
            errors=(401, 413, 422), params=ID_PARAMS, examples=seed_examples.NATIVE_UPSCALE)
async def upscale(request: web.Request) -> web.Response:
    """POST /api/v1/upscale: a task like any other; the result has round(w·scale)×round(h·scale) pixels."""
    ctx = request.app[CTX]
    config = ctx.config
    principal, req = await _parse(request, UpscaleRequest)
    image = await validation.input_image(req.image, "image", config)
    size = round(image.width * req.scale), round(image.height * req.scale)
    return await _submit(request, await upscale_spec(ctx, req, image, size), principal, req)


async def upscale_spec(ctx, req: UpscaleRequest, image, size: tuple[int, int]) -> Upscale:
    if max(size) > ctx.config.limits.max_upscale_side:
        raise invalid(["scale"], f"the result would be {size[0]}x{size[1]}, over "
                                 f"{ctx.config.limits.max_upscale_side} a side")
    return Upscale(image=await ctx.tasks.store_input(image), scale=req.scale, upscaler=req.upscaler, width=size[0],
                   height=size[1], output_format=_output_format(req.output_format), quality=req.output_quality)


class PngInfoRequest(BaseModel):
    image: str  # data URI or base64


@DOCS.route("POST", "/api/v1/png-info", "Read the generation parameters an image carries", body=PngInfoRequest,
            response=PngInfo, errors=(401, 422), examples=seed_examples.PNG_INFO)
async def png_info(request: web.Request) -> web.Response:
    """POST /api/v1/png-info: the generation parameters an image carries."""
    _principal(request)
    return await png_info_body(request)


async def png_info_body(request: web.Request) -> web.Response:
    """{info, parameters, items} of the image in the request body (A1111's png-info shape)."""
    config = request.app[CTX].config
    req = await validation.parse(request, PngInfoRequest, config)
    image = await validation.input_image(req.image, "image", config)
    with Image.open(io.BytesIO(image.data)) as img:
        text = imaging.read_parameters(img)
        items = {k: v for k, v in img.info.items() if isinstance(v, str) and k != "parameters"}
    return web.json_response({"info": text or "", "parameters": imaging.parse(text) if text else {},
                              "items": items})


@DOCS.route("GET", "/api/v1/models", "List the configured models", response=ModelList, errors=(401,))
async def list_models(request: web.Request) -> web.Response:
    """GET /api/v1/models: the configured models, and which live workers hold them loaded."""
    ctx = request.app[CTX]
    _principal(request)
    live = ctx.workers.live()
    return web.json_response({"default": ctx.config.default_model, "models": [
        {"name": m.name, "loaded": any(m.name in w.models_loaded for w in live),
         "workers": sum(m.name in w.models_served for w in live),
         "width": ctx.workers.default_size(m)[0], "height": ctx.workers.default_size(m)[1],
         "family": (info := ctx.workers.model_info(m.name)) and info.family, "sha256": info and info.sha256}
        for m in ctx.config.models]})


@DOCS.route("GET", "/api/v1/tasks/{task_id}", "A task's status and results", response=TaskView, errors=(401, 404),
            description="status pending/processing/completed/failed/cancelled; result_url for one image, "
                        "result_urls for several.")
async def get_task(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    record = await ctx.tasks.get(request.match_info["task_id"], _principal(request))
    return web.json_response(task_view(record, ctx.file_urls(request)))


@DOCS.route("GET", "/api/v1/tasks", "This key's tasks, newest first, page by page", response=TaskPageView,
            errors=(401, 422), params=HISTORY_PARAMS)
async def list_tasks(request: web.Request) -> web.Response:
    """GET /api/v1/tasks?status=&page=&page_size=&start_at=&end_at=: the calling key's tasks, newest first."""
    ctx = request.app[CTX]
    principal = _principal(request)
    statuses = []
    for name in filter(None, request.query.get("status", "").split(",")):
        try:
            statuses.append(TaskStatus(name.strip()))
        except ValueError:
            raise history.query_error("status", f"one of {[s.value for s in TaskStatus]}") from None
    query = history.task_list(request, principal, statuses)
    page = await ctx.tasks.page(query)
    file_url = ctx.file_urls(request)
    return web.json_response({"tasks": [task_view(r, file_url) for r in page.tasks], "total": page.total,
                              "page": query.offset // query.limit + 1, "page_size": query.limit})


@DOCS.route("DELETE", "/api/v1/tasks/{task_id}", "Delete a finished task and its images", status=204,
            errors=(401, 404, 409))
async def delete_task(request: web.Request) -> web.Response:
    """DELETE /api/v1/tasks/{id}: the task and its result images; 409 until it has finished."""
    await request.app[CTX].tasks.delete(request.match_info["task_id"], _principal(request))
    return web.Response(status=204)


@DOCS.route("POST", "/api/v1/tasks/{task_id}/cancel", "Cancel a task", response=CancelView, errors=(401, 404, 409),
            description="A pending task never starts; a running one stops within a step and ends cancelled.")
async def cancel_task(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    record = await ctx.tasks.cancel(request.match_info["task_id"], _principal(request))
    view = task_view(record, ctx.file_urls(request))
    view["message"] = ("Task cancelled" if record.status is TaskStatus.CANCELLED
                       else "Cancel requested; the task stops at its next step")
    return web.json_response(view)


@DOCS.route("GET", "/api/v1/tasks/{task_id}/events", "Follow a task live (Server-Sent Events)", response=SSE_EVENTS,
            media_type="text/event-stream", errors=(401, 404),
            params=(apidoc.Param("Last-Event-ID", "header", description="resume after this event"),))
async def task_events(request: web.Request) -> web.StreamResponse:
    file_url = request.app[CTX].file_urls(request)
    return await live.sse(request, _principal(request), lambda record: task_view(record, file_url))


@DOCS.route("GET", "/api/v1/ws", "Follow tasks live (WebSocket)", security=("ApiKey", "ApiKeyQuery"),
            errors=(400, 401), status=101, description=(
                "400 when the request is no WebSocket upgrade. "
                "Upgrade to a WebSocket; send {\"subscribe\": [\"<task_id>\", ...]} or {\"subscribe\": \"all\"} "
                "(this key's new tasks), optionally \"previews\": false and \"images\": true (a completed event "
                "then carries its images too, base64, in the order of its URLs: no download needed); receive "
                "{event, task_id, id, data} with "
                "the events of GET /api/v1/tasks/{task_id}/events (progress data: the Progress schema). The key "
                "may come as ?api_key=, since browsers cannot set headers on a WebSocket."))
async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Browsers cannot set headers on a WebSocket: the key may come as ?api_key= too."""
    ctx = request.app[CTX]
    principal = ctx.authenticate(request, ctx.config.api.key_header) or ctx.keyring.lookup(
        request.query.get("api_key"))
    if principal is None:
        raise ApiError(401, "Invalid or missing API key")
    file_url = ctx.file_urls(request)
    return await live.websocket(request, principal, lambda record: task_view(record, file_url))


def register(app: web.Application) -> None:
    app.router.add_post("/api/v1/generate", generate)
    app.router.add_post("/api/v1/upscale", upscale)
    app.router.add_post("/api/v1/png-info", png_info)
    app.router.add_get("/api/v1/models", list_models)
    app.router.add_get("/api/v1/tasks", list_tasks)
    app.router.add_get("/api/v1/tasks/{task_id}", get_task)
    app.router.add_delete("/api/v1/tasks/{task_id}", delete_task)
    app.router.add_post("/api/v1/tasks/{task_id}/cancel", cancel_task)
    app.router.add_get("/api/v1/tasks/{task_id}/events", task_events)
    app.router.add_get("/api/v1/ws", websocket)
