"""The AUTOMATIC1111 dialect (`/sdapi/v1/*`, seeds/a1111_style.md): synchronous txt2img/img2img,
progress, interrupt, options, listings. Requests map onto the native JobSpec."""

import asyncio
import base64
import binascii
import hashlib
import json
import time
import uuid
from pathlib import Path

import msgspec
from aiohttp import web
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import subjects
from schemas.events import TaskStatus
from services import imaging

from . import apidoc, native, samplers, seed_examples, validation
from . import styles as prompt_styles
from .a1111_replies import A1111Error, ExtrasBatchReply, ExtrasReply, ImagesReply, ProgressReply
from .auth import Principal
from .context import CTX
from .errors import RENDERERS, ApiError, invalid
from .inputs import RESIZE_MODES

DIALECT = "a1111"
PREFIX = "/sdapi/v1/"
INPAINTING_FILL = {0: "original", 1: "original", 2: "latent_noise", 3: "latent_nothing"}  # 0 "fill": closest
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
    cfg_scale: float = 7.0
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


# Native field names in an error's `loc`, as the A1111 request named them.
FIELD_NAMES = {"num_inference_steps": "steps", "guidance_scale": "cfg_scale", "num_images": "batch_size",
               "init_image": "init_images", "mask_image": "mask", "strength": "denoising_strength",
               "model": "sd_model_checkpoint", "hr_scale": "hr_scale", "invert_mask": "inpainting_mask_invert"}


def a1111_names(detail):
    if not isinstance(detail, list):
        return detail
    return [{**d, "loc": [FIELD_NAMES.get(str(part), part) for part in d["loc"]]} for d in detail]


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
    bare = title.split(" [", 1)[0].strip()
    for model in config.models:
        files = [Path(p).name for p in (model.path, model.checkpoint) if p]
        if bare in (model.name, *files) or Path(bare).stem in (model.name, *(Path(f).stem for f in files)):
            return model.name
    return None


def native_request(req: A1111Request, owner_options: dict, init_image: str | None, config) -> dict:
    """The same request in the native dialect's terms (img2img: init_image, already resized)."""
    title = req.override_settings.get("sd_model_checkpoint") or owner_options.get("sd_model_checkpoint")
    model = (model_named(str(title), config) or title) if title else title  # unknown: native names the choices
    names = [n for n in req.styles if n]
    if prompt_styles.unknown(names, config):
        raise invalid(["styles"], f"unknown styles {prompt_styles.unknown(names, config)}; "
                                  f"known: {list(prompt_styles.load(config))}")
    prompt, negative = prompt_styles.apply_a1111(req.prompt, req.negative_prompt, names, config)
    body = {
        "prompt": prompt or " ", "negative_prompt": negative, "seed": req.seed,
        "num_inference_steps": req.steps, "guidance_scale": req.cfg_scale, "width": req.width,
        "height": req.height, "num_images": req.batch_size * req.n_iter, "model": model,
    }
    if init_image is not None:
        body.update(init_image=init_image,
                    strength=0.75 if req.denoising_strength is None else req.denoising_strength)
        if req.mask:
            body.update(mask_image=req.mask, mask_blur=req.mask_blur,
                        inpainting_fill=INPAINTING_FILL[req.inpainting_fill], inpaint_full_res=req.inpaint_full_res,
                        inpaint_full_res_padding=req.inpaint_full_res_padding,
                        invert_mask=bool(req.inpainting_mask_invert))
    elif req.enable_hr:
        scale = req.hr_scale
        if req.hr_resize_x or req.hr_resize_y:
            scale = max(req.hr_resize_x / req.width, req.hr_resize_y / req.height)
        body.update(enable_hr=True, hr_scale=scale, hr_upscaler=req.hr_upscaler or "Latent",
                    hr_second_pass_steps=req.hr_second_pass_steps,
                    denoising_strength=0.7 if req.denoising_strength is None else req.denoising_strength)
    return {k: v for k, v in body.items() if v is not None}


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
    init_image = None
    if img2img:
        if not req.init_images:
            raise invalid(["init_images"], "img2img needs init_images")
        init_image = await validation.resized_image(req.init_images[0], ["init_images", 0], req.width, req.height,
                                                    req.resize_mode, ctx.config)
    try:
        native_req = native.GenerateRequest.model_validate(
            native_request(req, await request.app[STATE].get("options", who.owner, {}), init_image, ctx.config),
            context=ctx.config)
        spec = await native.build_spec(ctx, native_req)
    except ValidationError as e:
        raise ApiError(422, a1111_names(validation.detail(e))) from None
    except ApiError as e:
        raise ApiError(e.status, a1111_names(e.detail)) from None
    if chosen.scheduler is not None:
        spec = msgspec.structs.replace(spec, scheduler=chosen.scheduler, scheduler_options=chosen.options)
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
    return web.json_response({"images": images, "parameters": raw, "info": json.dumps(info(spec, task_id, chosen))})


async def run_to_end(ctx, who: Principal, spec, task_id: str):
    """Submit and wait for the task to end (A1111's endpoints are synchronous)."""
    await ctx.tasks.submit(spec, who, dialect=DIALECT, task_id=task_id)
    return await ctx.tasks.wait(task_id, who)


def info(spec, task_id: str, chosen: samplers.Resolution) -> dict:
    """A1111's `info` (Processed.js()); `notes` says what diffbus ran differently from the request."""
    seeds = spec.seeds
    return {
        "prompt": spec.prompt, "all_prompts": [spec.prompt] * len(seeds), "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": [spec.negative_prompt] * len(seeds), "seed": spec.seed, "all_seeds": seeds,
        "subseed": -1, "all_subseeds": [-1] * len(seeds), "subseed_strength": 0, "width": spec.width,
        "height": spec.height, "sampler_name": chosen.sampler or "Automatic", "cfg_scale": spec.guidance_scale,
        "steps": spec.steps, "batch_size": spec.num_images, "restore_faces": False, "sd_model_name": spec.model,
        "denoising_strength": getattr(spec, "strength", None), "infotexts": [imaging.infotext(spec, s) for s in seeds],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1, "task_id": task_id,
        "extra_generation_params": {"Schedule type": chosen.schedule}, "notes": chosen.notes,
    }


@DOCS.route("POST", PREFIX + "txt2img", "txt2img, answered when the images are done", body=A1111Request,
            response=ImagesReply, errors=(401, 409, 422, 500, 504), examples=seed_examples.A1111_TXT2IMG,
            description="batch_size × n_iter images with consecutive seeds; sampler_name and scheduler in "
                        "A1111's names; task_id (the seed's extension) names the task for /sdapi/v1/progress.")
async def txt2img(request: web.Request) -> web.Response:
    return await _generate(request, img2img=False)


@DOCS.route("POST", PREFIX + "img2img", "img2img (and inpaint with mask), answered when done", body=A1111Request,
            response=ImagesReply, errors=(401, 409, 422, 500, 504), examples=seed_examples.A1111_IMG2IMG)
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
    empty = {"progress": 0.0, "eta_relative": 0.0, "state": {"skipped": False, "interrupted": False, "job": "",
             "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0},
             "current_image": None, "textinfo": None, "current_task": None}
    if not task_id:
        return web.json_response(empty)
    try:
        record = await ctx.tasks.get(task_id, who)
    except ApiError as e:
        if explicit or e.status != 404:
            raise
        return web.json_response(empty)  # the latest task was deleted: idle
    if not explicit and record.status.is_terminal():
        return web.json_response(empty)
    last = await ctx.tasks.last_progress(task_id)
    state = {**empty["state"], "job": task_id, "job_count": 1, "task_id": task_id,
             "interrupted": record.status is TaskStatus.CANCELLED}
    body = {**empty, "state": state, "current_task": task_id}
    if record.status is TaskStatus.COMPLETED:
        body["progress"] = 1.0
    elif last is not None and record.status is TaskStatus.PROCESSING:
        body.update(progress=last.fraction, eta_relative=last.eta_s or 0.0)
        state.update(sampling_step=last.step, sampling_steps=last.total_steps)
        if request.query.get("skip_current_image", "false").lower() != "true":
            body["current_image"] = last.preview
    return web.json_response(body)


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


@DOCS.route("POST", PREFIX + "png-info", "Read the generation parameters an image carries",
            body=native.PngInfoRequest, response=native.PngInfo, errors=(401, 422), examples=seed_examples.PNG_INFO)
async def png_info(request: web.Request) -> web.Response:
    """POST /sdapi/v1/png-info {image}: {info, items, parameters}."""
    principal(request)
    return await native.png_info_body(request)


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
    try:
        native_req = native.UpscaleRequest.model_validate({"image": value, "scale": scale, "upscaler": upscaler},
                                                          context=ctx.config)
    except ValidationError as e:
        raise ApiError(422, validation.detail(e)) from None
    size = ((req.upscaling_resize_w, req.upscaling_resize_h) if req.resize_mode == 1
            else (round(image.width * scale), round(image.height * scale)))
    spec = await native.upscale_spec(ctx, native_req, image, size)
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
            body=ExtrasSingleRequest, response=ExtrasReply, errors=(401, 422, 500, 504),
            examples=seed_examples.A1111_EXTRAS)
async def extra_single_image(request: web.Request) -> web.Response:
    """POST /sdapi/v1/extra-single-image: an upscale task, waited for; {html_info, image}."""
    ctx = request.app[CTX]
    who = principal(request)
    req = await _extras_request(request, ExtrasSingleRequest)
    data, html = await _upscale(ctx, who, req, req.image, "image")
    return web.json_response({"html_info": html, "image": base64.b64encode(data).decode()})


@DOCS.route("POST", PREFIX + "extra-batch-images", "Upscale several images, answered when all are done",
            body=ExtrasBatchRequest, response=ExtrasBatchReply, errors=(401, 422, 500, 504))
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
    return web.json_response({"html_info": done[0][1],
                              "images": [base64.b64encode(data).decode() for data, _ in done]})


def register(app: web.Application) -> None:
    from . import a1111_listings

    app[STATE] = KeyState(app[CTX].tasks.js)
    app[RENDERERS].append((PREFIX, error_shape))
    for path, handler in (("txt2img", txt2img), ("img2img", img2img), ("interrupt", interrupt),
                          ("skip", interrupt), ("png-info", png_info), ("extra-single-image", extra_single_image),
                          ("extra-batch-images", extra_batch_images)):
        app.router.add_post(PREFIX + path, handler)
    app.router.add_get(PREFIX + "progress", progress)
    a1111_listings.register(app)
