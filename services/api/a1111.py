"""The AUTOMATIC1111 dialect (`/sdapi/v1/*`, seeds/a1111_style.md): synchronous txt2img/img2img,
progress, interrupt; its image tools are in a1111_extras.py, its listings and options in a1111_listings.py.
A request maps to the neutral request (services/api/request.py), which the layer builds into a JobSpec."""

import base64
import binascii
import hashlib
import json
import time
import uuid

import msgspec
from aiohttp import web
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import subjects
from schemas.events import TaskStatus
from schemas.jobs import InpaintFill
from services import imaging

from . import apidoc, fetch, samplers, seed_examples, validation
from . import request as request_layer
from . import styles as prompt_styles
from .a1111_replies import A1111Error, ImagesReply, Info, ProgressReply, ProgressState
from .auth import Principal
from .context import CTX
from .errors import RENDERERS, ApiError, invalid
from .inputs import RESIZE_MODES, InputImage
from .replies import json_reply
from .request import GenerationRequest, HiresRequest, InpaintOptions

DIALECT = "a1111"
PREFIX = "/sdapi/v1/"
INPAINTING_FILL = {0: InpaintFill.ORIGINAL, 1: InpaintFill.ORIGINAL, 2: InpaintFill.LATENT_NOISE,
                   3: InpaintFill.LATENT_NOTHING}  # 0 "fill": closest
DOCS = apidoc.Docs(DIALECT, "AUTOMATIC1111's web UI API (seed a1111_style.md): synchronous txt2img/img2img and "
                   "its listings. The key in X-API-Key, or HTTP Basic with the key as the password.",
                   security=("ApiKey", "HTTPBasic"), error_model=A1111Error)
NOTHING = {"type": "null"}
EMPTY = {"type": "object", "maxProperties": 0}
TASK_PARAM = apidoc.Param("task_id", description="default: the calling key's latest task")


class KeyState:
    """Per-key state in a KV bucket, so every API replica sees the same: options, latest task."""

    def __init__(self, js):
        self.js = js

    @staticmethod
    def key(kind: str, owner: str) -> str:
        """One KV key per owner id, exactly ("Alice" and "alice" are two owners)."""
        return f"a1111.{kind}.{hashlib.sha256(owner.encode()).hexdigest()[:32]}"

    async def get(self, kind: str, owner: str, default=None):
        kv = await self.js.key_value(subjects.DIALECT_STATE_BUCKET)
        try:
            return json.loads((await kv.get(self.key(kind, owner))).value)
        except KeyNotFoundError:
            return default

    async def put(self, kind: str, owner: str, value) -> None:
        kv = await self.js.key_value(subjects.DIALECT_STATE_BUCKET)
        await kv.put(self.key(kind, owner), json.dumps(value).encode())


STATE = web.AppKey("a1111_state", KeyState)


def error_shape(status: int, detail) -> dict:
    """A1111's error body: {error, detail, body, errors}; 404 stays {detail: "Not Found"}."""
    if status == 404:
        return {"detail": "Not Found"}
    kind = {401: "HTTPException", 422: "RequestValidationError"}.get(status, "HTTPException")
    errors = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail) \
        if isinstance(detail, list) else str(detail)
    return {"error": kind, "detail": detail, "body": "", "errors": errors}


class A1111Request(BaseModel):
    """Fields of A1111's StableDiffusionProcessingTxt2Img/Img2Img API models."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = []
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    sampler_name: str | None = None
    sampler_index: str | None = None  # deprecated alias of sampler_name
    scheduler: str | None = None  # a schedule type's name or label
    script_name: str | None = None
    alwayson_scripts: dict = {}
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int = Field(50, ge=1)
    cfg_scale: float = 7.0  # Flux dev: its distilled guidance, unless distilled_cfg_scale is given
    distilled_cfg_scale: float | None = Field(None, ge=0)  # Forge: Flux's distilled guidance (cfg_scale: real CFG)
    true_cfg_scale: float | None = Field(None, ge=1)  # Flux: real CFG, for a negative prompt (diffusers' name)
    width: int = Field(512, ge=1)
    height: int = Field(512, ge=1)
    denoising_strength: float | None = Field(None, ge=0, le=1)
    restore_faces: bool | None = None
    tiling: bool | None = None
    override_settings: dict = {}
    send_images: bool = True
    save_images: bool = False
    force_task_id: str | None = None
    task_id: str | None = None  # the seed document's extension
    # txt2img
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = Field(0, ge=0)
    hr_resize_y: int = Field(0, ge=0)
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_sampler_name: str | None = None
    # img2img
    init_images: list[str] = []
    resize_mode: int = 0
    mask: str | None = None
    mask_blur: int = 4
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


# The A1111 name of each neutral request field (for errors).
NAMES = {"steps": ["steps"], "guidance_scale": ["cfg_scale"], "distilled_guidance": ["distilled_cfg_scale"],
         "num_images": ["batch_size"], "init_image": ["init_images", 0], "mask_image": ["mask"],
         "strength": ["denoising_strength"], "model": ["sd_model_checkpoint"], "hr_steps": ["hr_second_pass_steps"],
         "hires": ["enable_hr"], "loras": ["prompt"], "scheduler": ["sampler_name"]}


def principal(request: web.Request) -> Principal:
    """X-API-Key, or HTTP Basic with the API key as the password (A1111's --api-auth clients)."""
    ctx = request.app[CTX]
    found = ctx.authenticate(request, ctx.config.api.key_header)
    header = request.headers.get("Authorization", "")
    if found is None and header.startswith("Basic "):
        try:
            _, _, password = base64.b64decode(header[6:]).decode().partition(":")
            found = ctx.keyring.lookup(password)
        except (binascii.Error, UnicodeDecodeError):
            found = None
    if found is None:
        raise ApiError(401, "Not authenticated", headers={"WWW-Authenticate": "Basic"})
    return found


def _unsupported(req: A1111Request) -> None:
    for field, value in (("restore_faces", req.restore_faces), ("tiling", req.tiling)):
        if value:
            raise invalid([field], f"{field} is not supported by diffbus")
    if req.subseed_strength:
        raise invalid(["subseed_strength"], "variation seeds (subseed) are not supported")
    if req.script_name:
        raise invalid(["script_name"], f"Script '{req.script_name}' not found: diffbus runs no scripts")
    if req.alwayson_scripts:
        name = next(iter(req.alwayson_scripts))
        raise invalid(["alwayson_scripts"], f"always on script {name} not found: diffbus runs no scripts")
    for field, value, same_as in (("hr_prompt", req.hr_prompt, req.prompt),
                                  ("hr_negative_prompt", req.hr_negative_prompt, req.negative_prompt),
                                  ("hr_sampler_name", req.hr_sampler_name, req.sampler_name or req.sampler_index)):
        if value and value != same_as:
            raise invalid([field], f"a second-pass {field[3:]} different from the first is not supported")
    if req.resize_mode not in RESIZE_MODES:
        raise invalid(["resize_mode"], f"resize_mode must be one of {sorted(RESIZE_MODES)}")


def model_named(title: str, config) -> str | None:
    """A configured model from an A1111 checkpoint title: "name", "name.safetensors", "name [hash]"."""
    return request_layer.configured_model(title.split(" [", 1)[0].strip(), config)


def to_request(req: A1111Request, owner_options: dict, init: InputImage | None, mask: InputImage | None,
               chosen: samplers.Resolution, config) -> GenerationRequest:
    """The neutral request of an A1111 txt2img/img2img request (img2img: init already resized)."""
    title = req.override_settings.get("sd_model_checkpoint") or owner_options.get("sd_model_checkpoint")
    model = (model_named(str(title), config) or str(title)) if title else None  # unknown: the builder says
    names = [n for n in req.styles if n]
    unknown = prompt_styles.unknown(names, config)
    if unknown:
        raise invalid(["styles"], f"unknown styles {unknown}; "
                                  f"known: {list(prompt_styles.load(config))}")
    prompt, negative = prompt_styles.apply_a1111(req.prompt, req.negative_prompt, names, config)
    hires = None
    if req.enable_hr and init is None:
        scale = req.hr_scale
        if req.hr_resize_x or req.hr_resize_y:
            scale = max(req.hr_resize_x / req.width, req.hr_resize_y / req.height)
        hires = HiresRequest(scale=scale, upscaler=req.hr_upscaler or "Latent", steps=req.hr_second_pass_steps,
                             denoising_strength=0.7 if req.denoising_strength is None else req.denoising_strength)
    strength = None
    if init is not None:
        strength = 0.75 if req.denoising_strength is None else req.denoising_strength
    return GenerationRequest(
        prompt=prompt or " ", negative_prompt=negative, model=model, seed=req.seed, steps=req.steps,
        guidance_scale=req.cfg_scale, width=None if init else req.width, height=None if init else req.height,
        num_images=req.batch_size * req.n_iter, scheduler=chosen.scheduler, scheduler_options=chosen.options,
        sampler=chosen, true_cfg_scale=req.true_cfg_scale, distilled_guidance=req.distilled_cfg_scale,
        init_image=init, strength=strength, mask_image=mask, hires=hires, names=NAMES,
        inpaint=InpaintOptions(mask_blur=req.mask_blur, fill=INPAINTING_FILL[req.inpainting_fill],
                               full_res=req.inpaint_full_res, full_res_padding=req.inpaint_full_res_padding,
                               invert_mask=bool(req.inpainting_mask_invert)))


async def _images(request: web.Request, req: A1111Request) -> tuple[InputImage, InputImage | None]:
    """img2img's init image (fetched when a URL, as A1111 with api_enable_requests), resized to the
    request's size, and its mask."""
    config = request.app[CTX].config
    if not req.init_images:
        raise invalid(["init_images"], "img2img needs init_images")
    first = req.init_images[0]
    if fetch.is_url(first):
        first = await fetch.image_url(first, ["init_images", 0], config)
    init = await validation.resized_image(first, ["init_images", 0], req.width, req.height, req.resize_mode, config)
    mask = req.mask
    if fetch.is_url(mask):
        mask = await fetch.image_url(mask, "mask", config)
    return init, None if not mask else await validation.input_image(mask, "mask", config)


async def _generate(request: web.Request, img2img: bool) -> web.Response:
    ctx = request.app[CTX]
    who = principal(request)
    raw = await validation.read_json(request)
    try:
        req = A1111Request.model_validate(raw)
        _unsupported(req)
        chosen = samplers.resolve(req.sampler_name or req.sampler_index, req.scheduler)
    except ValidationError as e:
        raise ApiError(422, validation.detail(e)) from None
    task_id = req.force_task_id or req.task_id or uuid.uuid4().hex
    if not subjects.is_valid_task_id(task_id):
        raise invalid(["force_task_id" if req.force_task_id else "task_id"],
                      "letters, digits, - and _ only, at most 64")
    init, mask = await _images(request, req) if img2img else (None, None)
    options = await request.app[STATE].get("options", who.owner, {})
    spec = await request_layer.build(ctx, to_request(req, options, init, mask, chosen, ctx.config))
    await ctx.tasks.submit(spec, who, dialect=DIALECT, task_id=task_id)  # 409 when the id is taken
    await request.app[STATE].put("latest", who.owner, task_id)
    record = await ctx.tasks.wait(task_id, who)
    if record.status is TaskStatus.FAILED:
        raise ApiError(500, record.error_message)
    images = []
    if req.send_images:
        for image in record.images:
            images.append(base64.b64encode(await ctx.tasks.storage.get(image.key) or b"").decode())
    if img2img and req.include_init_images:
        images += [i.split(",", 1)[-1] for i in req.init_images]
    text = msgspec.json.encode(info(spec, task_id, chosen, req.styles)).decode()
    return json_reply(ImagesReply(images=images, parameters=raw, info=text))


async def run_to_end(ctx, who: Principal, spec, task_id: str):
    """Submit and wait for the task to end (A1111's endpoints are synchronous)."""
    await ctx.tasks.submit(spec, who, dialect=DIALECT, task_id=task_id)
    return await ctx.tasks.wait(task_id, who)


def info(spec, task_id: str, chosen: samplers.Resolution, styles: list[str]) -> Info:
    """A1111's `info` (Processed.js()); `notes` says what diffbus ran differently from the request."""
    seeds = spec.seeds
    return Info(
        prompt=spec.prompt, all_prompts=[spec.prompt] * len(seeds), negative_prompt=spec.negative_prompt,
        all_negative_prompts=[spec.negative_prompt] * len(seeds), seed=spec.seed, all_seeds=seeds, subseed=-1,
        all_subseeds=[-1] * len(seeds), subseed_strength=0, width=spec.width, height=spec.height,
        sampler_name=chosen.sampler or "Automatic", cfg_scale=spec.guidance_scale, steps=spec.steps,
        batch_size=spec.num_images, restore_faces=False, face_restoration_model=None, sd_model_name=spec.model,
        sd_model_hash=spec.model_hash, sd_vae_name=None, sd_vae_hash=None, seed_resize_from_w=-1,
        seed_resize_from_h=-1, denoising_strength=getattr(spec, "strength", None),
        extra_generation_params={"Schedule type": chosen.schedule}, index_of_first_image=0,
        infotexts=[imaging.infotext(spec, s) for s in seeds], styles=styles,
        job_timestamp=time.strftime("%Y%m%d%H%M%S"), clip_skip=1, is_using_inpainting_conditioning=False,
        version="diffbus", task_id=task_id, notes=chosen.notes)


@DOCS.route("POST", PREFIX + "txt2img", "txt2img, answered when the images are done", body=A1111Request,
            response=ImagesReply, errors=(401, 409, 422, 429, 500, 504), examples=seed_examples.A1111_TXT2IMG,
            description="batch_size × n_iter images with consecutive seeds; sampler_name and scheduler in "
                        "A1111's names; task_id (the seed's extension) names the task for /sdapi/v1/progress.")
async def txt2img(request: web.Request) -> web.Response:
    return await _generate(request, img2img=False)


@DOCS.route("POST", PREFIX + "img2img", "img2img (and inpaint with mask), answered when done", body=A1111Request,
            response=ImagesReply, errors=(401, 409, 422, 429, 500, 504), examples=seed_examples.A1111_IMG2IMG)
async def img2img(request: web.Request) -> web.Response:
    return await _generate(request, img2img=True)


@DOCS.route("GET", PREFIX + "progress", "Progress of a task", response=ProgressReply, errors=(401, 404),
            params=(TASK_PARAM, apidoc.Param("skip_current_image", schema={"type": "boolean"})))
async def progress(request: web.Request) -> web.Response:
    """GET /sdapi/v1/progress[?task_id=]: that task (the seed's extension), or as A1111 does, the
    calling key's task in progress, idle (progress 0, job_count 0) when it has none."""
    ctx = request.app[CTX]
    who = principal(request)
    explicit = request.query.get("task_id")
    task_id = explicit or await request.app[STATE].get("latest", who.owner)
    idle = ProgressReply(progress=0.0, eta_relative=0.0, current_image=None, textinfo=None, state=ProgressState(
        skipped=False, interrupted=False, job="", job_count=0, job_timestamp="0", job_no=0, sampling_step=0,
        sampling_steps=0))
    if not task_id:
        return json_reply(idle)
    try:
        record = await ctx.tasks.get(task_id, who)
    except ApiError as e:
        if explicit or e.status != 404:
            raise
        return json_reply(idle)  # the latest task was deleted: idle
    if not explicit and record.status.is_terminal():
        return json_reply(idle)
    last = await ctx.tasks.last_progress(task_id)
    body = msgspec.structs.replace(idle, current_task=task_id, state=msgspec.structs.replace(
        idle.state, job=task_id, job_count=1, task_id=task_id, interrupted=record.status is TaskStatus.CANCELLED))
    if record.status is TaskStatus.COMPLETED:
        body.progress = 1.0
    elif last is not None and record.status is TaskStatus.PROCESSING:
        body.progress, body.eta_relative = last.fraction, last.eta_s or 0.0
        body.state.sampling_step, body.state.sampling_steps = last.step, last.total_steps
        if request.query.get("skip_current_image", "false").lower() != "true":
            body.current_image = last.preview
    return json_reply(body)


@DOCS.route("POST", PREFIX + "interrupt", "Stop the running task", response=EMPTY, errors=(401, 404),
            params=(TASK_PARAM,))
@DOCS.route("POST", PREFIX + "skip", "Stop the running task (as interrupt)", response=NOTHING, errors=(401, 404),
            params=(TASK_PARAM,))
async def interrupt(request: web.Request) -> web.Response:
    """POST /sdapi/v1/interrupt (and /skip): stops the calling key's running task (or ?task_id=).
    A1111 answers interrupt with {} and skip with null."""
    ctx = request.app[CTX]
    who = principal(request)
    task_id = request.query.get("task_id") or await request.app[STATE].get("latest", who.owner)
    if task_id:
        try:
            await ctx.tasks.cancel(task_id, who)
        except ApiError as e:
            if e.status != 409:
                raise
    return web.json_response({} if request.path.endswith("/interrupt") else None)


def register(app: web.Application) -> None:
    from . import a1111_extras, a1111_listings

    app[STATE] = KeyState(app[CTX].tasks.js)
    app[RENDERERS].append((PREFIX, error_shape))
    for path, handler in (("txt2img", txt2img), ("img2img", img2img), ("interrupt", interrupt),
                          ("skip", interrupt)):
        app.router.add_post(PREFIX + path, handler)
    app.router.add_get(PREFIX + "progress", progress)
    a1111_extras.register(app)
    a1111_listings.register(app)
