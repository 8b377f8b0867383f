"""The native dialect (seeds/sd_model_api.md): /api/v1/generate, /api/v1/upscale, /api/v1/png-info and
/api/v1/models, X-API-Key. Its request models, their mapping to the neutral request (services/api/request.py),
and its routes; the task routes are in native_tasks.py."""

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.events import Progress, WebhookEvent
from schemas.jobs import LATENT_UPSCALER, SCHEDULERS, InpaintFill, Outpaint

from . import apidoc, png_info, seed_examples, validation
from . import request as request_layer
from .context import CTX
from .errors import ApiError, FastApiError
from .inputs import InputImage
from .native_replies import ModelList, ModelView, TaskCreated
from .replies import json_reply
from .request import GenerationRequest, HiresRequest, InpaintOptions

DIALECT = "native"
DOCS = apidoc.Docs(DIALECT, "The native API of the seed sd_model_api.md: asynchronous tasks, polling, webhooks, "
                   "live progress.", error_model=FastApiError, schemas=(Progress,))


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
    guidance_scale: float | None = Field(None, ge=0)  # Flux dev: its distilled guidance
    true_cfg_scale: float | None = Field(None, ge=1)  # Flux: real CFG, needed for a negative prompt (2x the work)
    strength: float | None = Field(None, ge=0, le=1)  # img2img only
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]
    seed: int | None = Field(None, ge=-1, lt=request_layer.SEED_RANGE)  # None or -1: random
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
    return json_reply(TaskCreated(task_id=record.task_id, status="pending",
                                  message="Task created; poll /api/v1/tasks/{task_id} for the result"))


@DOCS.route("POST", "/api/v1/generate", "Generate images (txt2img, img2img, inpaint, outpaint, hires fix)",
            body=GenerateRequest, response=TaskCreated, errors=(401, 413, 422, 429), params=ID_PARAMS,
            examples=seed_examples.NATIVE_GENERATE, description=(
                "A task is queued and its id returned at once. No init_image: txt2img; init_image (a data URI): "
                "img2img; with mask_image: inpaint; with outpaint: outpaint. Poll GET /api/v1/tasks/{task_id}, "
                "follow it live, or pass callback_url."))
async def generate(request: web.Request) -> web.Response:
    principal, req = await _parse(request, GenerateRequest)
    config = request.app[CTX].config
    init = None if req.init_image is None else await validation.input_image(req.init_image, "init_image", config)
    mask = None if req.mask_image is None else await validation.input_image(req.mask_image, "mask_image", config)
    return await _submit(request, await request_layer.build(request.app[CTX], to_request(req, init, mask)),
                         principal, req)


# The native name of each neutral request field that differs.
NAMES = {"steps": ["num_inference_steps"], "quality": ["output_quality"], "hr_steps": ["hr_second_pass_steps"],
         "hires": ["enable_hr"]}


def to_request(req: GenerateRequest, init: InputImage | None, mask: InputImage | None) -> GenerationRequest:
    """The neutral request of a validated native request (its images decoded)."""
    hires = None
    if req.enable_hr:
        hires = HiresRequest(scale=req.hr_scale, upscaler=req.hr_upscaler, steps=req.hr_second_pass_steps,
                             denoising_strength=req.denoising_strength)
    return GenerationRequest(
        prompt=req.prompt, negative_prompt=req.negative_prompt or "", model=req.model,
        loras=[(lo.name, lo.weight) for lo in req.loras], width=req.width, height=req.height,
        num_images=req.num_images, steps=req.num_inference_steps, guidance_scale=req.guidance_scale,
        true_cfg_scale=req.true_cfg_scale, scheduler=req.scheduler, seed=req.seed, output_format=request_layer.output_format(req.output_format),
        quality=req.output_quality, init_image=init, strength=req.strength, mask_image=mask,
        inpaint=InpaintOptions(mask_blur=req.mask_blur, fill=req.inpainting_fill, full_res=req.inpaint_full_res,
                               full_res_padding=req.inpaint_full_res_padding, invert_mask=req.invert_mask),
        outpaint=None if req.outpaint is None else Outpaint(**req.outpaint.model_dump()), hires=hires, names=NAMES)


class UpscaleRequest(TaskRequest):
    image: str  # data URI
    scale: float = Field(2.0, ge=1)
    upscaler: str = "Lanczos"
    output_format: Literal["png", "jpg", "jpeg", "webp"] = "png"
    output_quality: int = Field(95, ge=1, le=100)


@DOCS.route("POST", "/api/v1/upscale", "Upscale an image", body=UpscaleRequest, response=TaskCreated,
            errors=(401, 413, 422, 429), params=ID_PARAMS, examples=seed_examples.NATIVE_UPSCALE)
async def upscale(request: web.Request) -> web.Response:
    """POST /api/v1/upscale: a task like any other; the result has round(w·scale)×round(h·scale) pixels."""
    ctx = request.app[CTX]
    principal, req = await _parse(request, UpscaleRequest)
    image = await validation.input_image(req.image, "image", ctx.config)
    spec = await request_layer.build_upscale(ctx, request_layer.UpscaleRequest(
        image=image, scale=req.scale, upscaler=req.upscaler, output_format=request_layer.output_format(
            req.output_format), quality=req.output_quality, names={"quality": ["output_quality"]}))
    return await _submit(request, spec, principal, req)


@DOCS.route("POST", "/api/v1/png-info", "Read the generation parameters an image carries",
            body=png_info.PngInfoRequest, response=png_info.PngInfo, errors=(401, 422), examples=seed_examples.PNG_INFO)
async def read_png_info(request: web.Request) -> web.Response:
    """POST /api/v1/png-info: the generation parameters an image carries."""
    _principal(request)
    return await png_info.reply(request)


@DOCS.route("GET", "/api/v1/models", "List the configured models", response=ModelList, errors=(401,))
async def list_models(request: web.Request) -> web.Response:
    """GET /api/v1/models: the configured models, and which live workers hold them loaded."""
    ctx = request.app[CTX]
    _principal(request)
    live = ctx.workers.live()
    models = []
    for m in ctx.config.models:
        info, (width, height) = ctx.workers.model_info(m.name), ctx.workers.default_size(m)
        models.append(ModelView(name=m.name, loaded=any(m.name in w.models_loaded for w in live),
                                workers=sum(m.name in w.models_served for w in live), width=width, height=height,
                                family=info and info.family, sha256=info and info.sha256))
    return json_reply(ModelList(default=ctx.config.default_model, models=models))


def register(app: web.Application) -> None:
    from . import native_tasks

    app.router.add_post("/api/v1/generate", generate)
    app.router.add_post("/api/v1/upscale", upscale)
    app.router.add_post("/api/v1/png-info", read_png_info)
    app.router.add_get("/api/v1/models", list_models)
    native_tasks.register(app)
