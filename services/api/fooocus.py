"""The FooocusAPI dialect (seeds/fooocusapi.md): POST /v1/engine/generate/ with its three reply modes
(async task object, streamed `data:` lines, the image bytes), the /tasks history, the model list, the
stop/skip control and /ping. Requests map onto the native JobSpec through native.build_spec.

Fooocus has many knobs diffbus has no machinery for (FreeU, refiners, ControlNet, SDXL ADM scaling...).
Such a field at its Fooocus default changes nothing and is accepted, so clients that send the whole
parameter set work; any other value is a 422 naming it, never silently dropped."""

import base64
import json
import re
from pathlib import Path
from typing import Literal

import msgspec
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.events import TaskStatus
from schemas.queries import TaskList, TaskRecord
from services.views.fooocus_task import preview_uri, task_object
from services.storage import FileUrl

from . import apidoc, fetch, history, live, native, samplers, seed_examples, validation
from . import styles as prompt_styles
from .auth import Principal
from .context import CTX
from .errors import ApiError, FastApiError, invalid
from .fooocus_replies import (
    IMAGE,
    STREAM,
    AllModels,
    ControlReply,
    TaskLists,
    TaskObject,
)

DIALECT = "fooocus"
PERFORMANCE_STEPS = {"Quality": 60, "Speed": 30, "Extreme Speed": 8, "Lightning": 4, "Hyper-SD": 4}
VARY_STRENGTH = {"Vary (Subtle)": 0.5, "Vary (Strong)": 0.85}
UPSCALE = {"Upscale (1.5x)": 1.5, "Upscale (2x)": 2.0, "Upscale (Fast 2x)": 2.0, "Upscale (Custom)": None}
OUTPAINT_SHARE = 0.3  # Fooocus grows a side by 30 % of the image when its distance is 0
# Fooocus (ComfyUI k-diffusion) sampler and scheduler names -> A1111 names (services/api/samplers.py)
SAMPLERS = {"euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
            "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpmpp_2s_ancestral": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE",
            "dpmpp_sde_gpu": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE",
            "dpmpp_2m_sde_gpu": "DPM++ 2M SDE", "ddim": "DDIM", "uni_pc": "UniPC", "uni_pc_bh2": "UniPC", "lcm": "LCM"}
SCHEDULES = {"normal": "Automatic", "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform"}
# Fields diffbus cannot honour: accepted only at these (Fooocus's default) values.
NOT_HONOURED = {
    "sharpness": 2.0, "refiner_model_name": "None", "vae_name": "Default (model)", "adm_scaler_positive": 1.5,
    "adm_scaler_negative": 0.8, "adm_scaler_end": 0.3, "adaptive_cfg": 7.0, "clip_skip": 2, "overwrite_switch": -1,
    "overwrite_upscale_strength": -1, "mixing_image_prompt_and_vary_upscale": False,
    "mixing_image_prompt_and_inpaint": False, "debugging_cn_preprocessor": False, "skipping_cn_preprocessor": False,
    "freeu_enabled": False, "debugging_inpaint_preprocessor": False, "inpaint_disable_initial_latent": False,
    "inpaint_engine": "v2.6", "inpaint_respective_field": 0.618, "controlnet_image": [],
    "generate_image_grid": False, "black_out_nsfw": False,
}
# Native field names in errors, as the Fooocus client named them.
FIELD_NAMES = {"num_images": "image_number", "num_inference_steps": "overwrite_step", "seed": "image_seed",
               "model": "base_model_name", "init_image": "uov_input_image", "mask_image": "inpaint_mask_image_upload",
               "width": "aspect_ratios_selection", "height": "aspect_ratios_selection"}
IMAGE_FIELDS = ("uov_input_image", "inpaint_input_image", "inpaint_mask_image_upload")
NO_IMAGE = ("", "None", "none", "null", "string")  # FooocusAPI reads these as no image (its defaults are "None")
ACCEPTED_IMAGES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp"}
DOCS = apidoc.Docs(DIALECT, "FooocusAPI (seed fooocusapi.md): one generate route with three reply modes, and the "
                   "task history.", error_model=FastApiError)
TIME_PARAMS = (apidoc.Param("start_at", description="ISO 8601, e.g. 2024-07-03T12:22:30 (UTC without a zone)"),
               apidoc.Param("end_at", description="ISO 8601; default now"))


class LoraRequest(BaseModel):
    enabled: bool = True
    model_name: str
    weight: float = Field(1.0, ge=-2, le=2)


class GenerateRequest(BaseModel):
    """FooocusAPI's CommonRequest (advanced parameters at the top level)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    style_selections: list[str] | None = None  # None: fooocus.default_styles
    performance_selection: Literal[tuple(PERFORMANCE_STEPS)] = "Speed"  # type: ignore[valid-type]
    aspect_ratios_selection: str | None = None  # "1152*896"; None: the model's size
    image_number: int = Field(1, ge=1)
    image_seed: int = Field(-1, ge=-1, lt=native.SEED_RANGE)
    sharpness: float = 2.0
    guidance_scale: float | None = Field(None, ge=0)
    base_model_name: str | None = None
    refiner_model_name: str = "None"
    refiner_switch: float = 0.8
    loras: list[LoraRequest] = []
    input_image_checkbox: bool = True  # ignored, as in FooocusAPI
    current_tab: str | None = None  # ignored: the fields given decide
    uov_method: str = "Disabled"
    uov_input_image: str | None = None
    upscale_multiple: float = Field(1.0, ge=1)
    outpaint_selections: list[Literal["Left", "Right", "Top", "Bottom"]] = []
    outpaint_distance: list[int] = Field([0, 0, 0, 0], min_length=4, max_length=4)  # left, top, right, bottom
    inpaint_input_image: str | None = None
    inpaint_mask_image_upload: str | None = None
    inpaint_additional_prompt: str = ""
    disable_preview: bool = False
    disable_intermediate_results: bool = False
    disable_seed_increment: bool = False
    black_out_nsfw: bool = False
    adm_scaler_positive: float = 1.5
    adm_scaler_negative: float = 0.8
    adm_scaler_end: float = 0.3
    adaptive_cfg: float = 7.0
    clip_skip: int = 2
    sampler_name: str | None = None  # None: the model's scheduler
    scheduler_name: str | None = None
    vae_name: str = "Default (model)"
    overwrite_step: int = -1
    overwrite_switch: float = -1
    overwrite_width: int = -1
    overwrite_height: int = -1
    overwrite_vary_strength: float = -1
    overwrite_upscale_strength: float = -1
    mixing_image_prompt_and_vary_upscale: bool = False
    mixing_image_prompt_and_inpaint: bool = False
    debugging_cn_preprocessor: bool = False
    skipping_cn_preprocessor: bool = False
    canny_low_threshold: int = 64
    canny_high_threshold: int = 128
    refiner_swap_method: str = "joint"
    controlnet_softness: float = 0.25
    freeu_enabled: bool = False
    freeu_b1: float = 1.01
    freeu_b2: float = 1.02
    freeu_s1: float = 0.99
    freeu_s2: float = 0.95
    debugging_inpaint_preprocessor: bool = False
    inpaint_disable_initial_latent: bool = False
    inpaint_engine: str = "v2.6"
    inpaint_strength: float = Field(1.0, ge=0, le=1)
    inpaint_respective_field: float = 0.618
    inpaint_mask_upload_checkbox: bool = False
    invert_mask_checkbox: bool = False
    inpaint_erode_or_dilate: int = Field(0, ge=-64, le=64)
    controlnet_image: list = []
    generate_image_grid: bool = False
    preset: str | None = None
    read_wildcards_in_order: bool = False
    save_metadata_to_images: bool = False
    metadata_scheme: Literal["fooocus", "a1111"] = "fooocus"
    output_format: Literal["png", "jpg", "jpeg", "webp"] = "png"
    require_base64: bool = False
    async_process: bool = False
    stream_output: bool = False
    webhook_url: str | None = None

    @field_validator(*IMAGE_FIELDS, mode="before")
    @classmethod
    def _no_image(cls, value):
        return None if value is None or (isinstance(value, str) and value.strip() in NO_IMAGE) else value


def principal(request: web.Request) -> Principal:
    ctx = request.app[CTX]
    found = ctx.authenticate(request, ctx.config.api.key_header)
    if found is None:
        raise ApiError(401, "Invalid or missing API key")
    return found


def styles(config) -> dict[str, dict]:
    return prompt_styles.load(config)


def styled(prompt: str, negative: str, names: list[str], config) -> tuple[str, str]:
    """Fooocus's template styles: each puts the prompt at `{prompt}` and adds its negative prompt."""
    known = styles(config)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise invalid(["style_selections"], f"unknown styles {unknown}; known: {sorted(known)}")
    positives, negatives = [], [negative] if negative else []
    for name in names:
        style = known[name]
        if style.get("prompt"):
            positives.append(style["prompt"].replace("{prompt}", prompt))
        if style.get("negative_prompt"):
            negatives.append(style["negative_prompt"])
    return ", ".join(positives) if positives else prompt, ", ".join(negatives)


def _unsupported(req: GenerateRequest) -> None:
    for field, default in NOT_HONOURED.items():
        if getattr(req, field) != default:
            raise invalid([field], f"{field} is not supported by diffbus; leave it at {default!r}")
    if req.preset not in (None, "", "initial", "default"):
        raise invalid(["preset"], "Fooocus presets are not supported; configure models in diffbus")


def _size(req: GenerateRequest) -> tuple[int | None, int | None]:
    width = height = None
    if req.aspect_ratios_selection:
        match = re.match(r"^\s*(\d+)\s*[*×x]\s*(\d+)", req.aspect_ratios_selection)
        if not match:
            raise invalid(["aspect_ratios_selection"], 'expected "width*height", e.g. "1152*896"')
        width, height = int(match[1]), int(match[2])
    return (req.overwrite_width if req.overwrite_width > 0 else width,
            req.overwrite_height if req.overwrite_height > 0 else height)


def _model_name(name: str | None, config) -> str | None:
    """A configured model by name, file name or file stem (Fooocus sends "x.safetensors")."""
    if not name or name == "None":
        return None
    for model in config.models:
        files = [Path(p).name for p in (model.path, model.checkpoint) if p]
        if name in (model.name, *files) or Path(name).stem in (model.name, *(Path(f).stem for f in files)):
            return model.name
    return name  # unknown: the native validation names the choices


def default_aspect(native: tuple[int, int]) -> tuple[int, int]:
    """Fooocus's default aspect ratio, 1152*896, at the model's native pixel count in multiples of
    64: 1152×896 itself for SDXL's 1024×1024."""
    scale = (native[0] * native[1] / (1152 * 896)) ** 0.5
    return max(64, round(1152 * scale / 64) * 64), max(64, round(896 * scale / 64) * 64)


def native_body(req: GenerateRequest, config) -> dict:
    """The request in the native dialect's terms (images still as sent)."""
    prompt, negative = styled(req.prompt, req.negative_prompt,
                              config.fooocus.default_styles if req.style_selections is None else req.style_selections,
                              config)
    width, height = _size(req)
    body = {
        "prompt": prompt.strip() or " ", "negative_prompt": negative, "model": _model_name(req.base_model_name, config),
        "width": width, "height": height, "num_images": req.image_number, "seed": req.image_seed,
        "num_inference_steps": req.overwrite_step if req.overwrite_step > 0 else PERFORMANCE_STEPS[req.performance_selection],
        "guidance_scale": req.guidance_scale, "output_format": req.output_format,
        "loras": [{"name": Path(lo.model_name).stem, "weight": lo.weight} for lo in req.loras
                  if lo.enabled and lo.model_name != "None"],
    }
    vary = req.uov_method in VARY_STRENGTH
    if req.uov_method != "Disabled" and not vary and req.uov_method not in UPSCALE:
        raise invalid(["uov_method"], f"one of {['Disabled', *VARY_STRENGTH, *UPSCALE]}")
    if req.uov_method != "Disabled" and not req.uov_input_image:
        raise invalid(["uov_input_image"], f"uov_method {req.uov_method!r} needs uov_input_image")
    inpainting = req.inpaint_input_image is not None or req.outpaint_selections
    if req.uov_method != "Disabled" and inpainting:
        raise invalid(["uov_method"], "vary/upscale and inpaint/outpaint cannot be combined in one request")
    if vary:
        strength = req.overwrite_vary_strength if req.overwrite_vary_strength > 0 else VARY_STRENGTH[req.uov_method]
        body.update(init_image=req.uov_input_image, strength=strength, width=None, height=None)
    elif inpainting:
        if req.inpaint_input_image is None:
            raise invalid(["inpaint_input_image"], "outpaint_selections need inpaint_input_image")
        if req.inpaint_mask_image_upload is None and not req.outpaint_selections:
            raise invalid(["inpaint_mask_image_upload"], "inpainting needs a mask (white = repaint)")
        if req.inpaint_additional_prompt:
            body["prompt"] = f"{req.inpaint_additional_prompt}, {body['prompt']}".strip(", ")
        body.update(init_image=req.inpaint_input_image, strength=req.inpaint_strength, width=None, height=None,
                    invert_mask=req.invert_mask_checkbox)
        if req.inpaint_mask_image_upload is not None:
            body["mask_image"] = req.inpaint_mask_image_upload  # grown or shrunk by build()
    return {k: v for k, v in body.items() if v is not None}


def _renamed(detail, req: GenerateRequest):
    """Native field names in an error's `loc` as the Fooocus request named them."""
    if not isinstance(detail, list):
        return detail
    names = {**FIELD_NAMES, "init_image": "uov_input_image" if req.uov_method != "Disabled" else "inpaint_input_image"}
    return [{**d, "loc": [names.get(str(part), part) for part in d["loc"]]} for d in detail]


async def _outpaint(ctx, req: GenerateRequest, body: dict) -> None:
    """Outpaint margins in pixels (multiples of 8): the given distance, else 30 % of the side."""
    if not req.outpaint_selections:
        return
    image = await validation.input_image(req.inpaint_input_image, "inpaint_input_image", ctx.config)
    margins = {}
    for side, distance in zip(("Left", "Top", "Right", "Bottom"), req.outpaint_distance):
        if side in req.outpaint_selections:
            across = image.width if side in ("Left", "Right") else image.height
            margins[side.lower()] = (distance or int(across * OUTPAINT_SHARE)) // 8 * 8
    body["outpaint"] = margins


async def build(ctx, req: GenerateRequest, file_url: FileUrl):
    """(JobSpec, req_params): the spec to run and the request as history keeps it (images as URLs)."""
    config = ctx.config
    _unsupported(req)
    body = native_body(req, config)
    if body.get("width") is None and body.get("height") is None and "init_image" not in body:
        model = config.model(body.get("model") or config.default_model)
        if model is not None and model.width is None and model.height is None:
            body["width"], body["height"] = default_aspect(ctx.workers.default_size(model))
    await _outpaint(ctx, req, body)
    if "mask_image" in body:
        body["mask_image"] = await validation.grown_mask(body["mask_image"], "inpaint_mask_image_upload",
                                                         req.inpaint_erode_or_dilate, config)
    if req.scheduler_name and req.scheduler_name not in SCHEDULES:
        raise invalid(["scheduler_name"], f"{req.scheduler_name!r} is not a supported Fooocus scheduler; "
                                          f"one of {sorted(SCHEDULES)}")
    try:
        chosen = samplers.resolve(SAMPLERS.get(req.sampler_name, req.sampler_name),
                                  SCHEDULES.get(req.scheduler_name, req.scheduler_name))
        native_req = native.GenerateRequest.model_validate(body, context=config)
    except ValidationError as e:
        raise ApiError(422, _renamed(validation.detail(e), req)) from None
    except ApiError:
        raise invalid(["sampler_name"], f"{req.sampler_name!r} is not a supported Fooocus sampler; "
                                        f"one of {sorted(SAMPLERS)}") from None
    cls, options = chosen.scheduler, chosen.options
    upscale = UPSCALE.get(req.uov_method, 0)
    if req.uov_method in UPSCALE:
        spec = await _upscale_spec(ctx, req, upscale or req.upscale_multiple)
    else:
        try:
            spec = await native.build_spec(ctx, native_req)
        except ApiError as e:
            raise ApiError(e.status, _renamed(e.detail, req)) from None
        spec = msgspec.structs.replace(
            spec, seed_increment=not req.disable_seed_increment,
            metadata=req.metadata_scheme if req.save_metadata_to_images else None,
            **({"scheduler": cls, "scheduler_options": options} if cls else {}))
    return spec, req_params(req, spec, file_url)


async def _upscale_spec(ctx, req: GenerateRequest, scale: float):
    config = ctx.config
    try:
        native_req = native.UpscaleRequest.model_validate(
            {"image": req.uov_input_image, "scale": scale, "upscaler": native.default_upscaler(config),
             "output_format": req.output_format},
            context=config)
    except ValidationError as e:
        raise ApiError(422, _renamed(validation.detail(e), req)) from None
    image = await validation.input_image(req.uov_input_image, "uov_input_image", config)
    return await native.upscale_spec(ctx, native_req, image, (round(image.width * scale), round(image.height * scale)))


def req_params(req: GenerateRequest, spec, file_url: FileUrl) -> dict:
    """The whole request with its defaults, each input image replaced by the URL it is stored at."""
    params = req.model_dump(mode="json")
    keys = {"uov_input_image": getattr(spec, "init_image", None) or getattr(spec, "image", None),
            "inpaint_input_image": getattr(spec, "init_image", None),
            "inpaint_mask_image_upload": getattr(spec, "mask_image", None)}
    for field in IMAGE_FIELDS:
        if params.get(field):
            params[field] = file_url(keys[field]) if keys[field] else None
    return params


@DOCS.route("POST", "/v1/engine/generate/", "Generate: a task object, a stream or the image", body=GenerateRequest,
            response=TaskObject, alternatives={"text/event-stream": STREAM, "image/*": IMAGE},
            errors=(401, 422, 500, 504), examples=seed_examples.FOOOCUS_GENERATE)
@DOCS.route("POST", "/v1/engine/generate", "Generate (as /v1/engine/generate/)", body=GenerateRequest,
            response=TaskObject, alternatives={"text/event-stream": STREAM, "image/*": IMAGE},
            errors=(401, 422, 500, 504))
async def generate(request: web.Request) -> web.StreamResponse:
    """POST /v1/engine/generate/: stream_output (checked first, as FooocusAPI) → `data:` lines until
    "Finished"; async_process → the task object now; neither → the image itself (image_number forced
    to 1; `Accept: image/png|jpeg|webp` picks its format), or with fooocus.sync_reply "json" and no image
    type in Accept, the finished task object. Image fields take base64, data URIs or http(s) URLs
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
    binary = not req.stream_output and not req.async_process and (
        accept is not None or ctx.config.fooocus.sync_reply == "binary")
    if binary:
        req.image_number = 1
        if accept is not None:
            req.output_format = accept
    for field in IMAGE_FIELDS:
        if fetch.is_url(getattr(req, field)):
            setattr(req, field, await fetch.image_url(getattr(req, field), field, ctx.config))
    file_url = ctx.file_urls(request)
    spec, params = await build(ctx, req, file_url)
    record = await ctx.tasks.submit(spec, who, dialect=DIALECT, callback_url=webhook, request=params)
    if req.stream_output:  # FooocusAPI checks stream_output first
        return await _stream(request, who, record, req)
    if req.async_process:
        return web.json_response(task_object(record, file_url))
    if binary:
        return await _binary(ctx, who, record)
    return web.json_response(await _view(ctx, await ctx.tasks.wait(record.task_id, who), file_url))


def _accepted_image(accept: str) -> str | None:
    """The output format an `Accept: image/png|jpeg|webp` header asks for (the first listed)."""
    for part in accept.split(","):
        found = ACCEPTED_IMAGES.get(part.split(";")[0].strip().lower())
        if found:
            return found
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


async def _stream(request: web.Request, who: Principal, record: TaskRecord, req: GenerateRequest) -> web.StreamResponse:
    ctx = request.app[CTX]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    images = "image 1/1" if req.image_number == 1 else f"images 1-{req.image_number}/{req.image_number}"
    last = 0
    async for out in live.follow(ctx, record.task_id, who, lambda r: r, previews=not req.disable_preview):
        if out is None:
            continue
        if out.name == "state":
            status = out.data.status
            message = "Waiting in queue ..." if status is TaskStatus.PENDING else "Preparing task 1/1 ..."
            await resp.write(_line(last, message))
        elif out.name == "progress":
            if out.data.get("status") == TaskStatus.PENDING:
                await resp.write(_line(0, f"Waiting in queue, {out.data.get('queue_position')} ahead ..."))
                continue
            last = min(99, int(out.data["fraction"] * 100))
            preview = preview_uri(msgspec.convert(out.data, live.Progress))
            stage = "Upscaling" if out.data.get("stage_name") == "upscale" else "Sampling step"
            await resp.write(_line(last, f"{stage} {out.data['step']}/{out.data['total_steps']}, {images} ...",
                                   preview))
        else:
            done: TaskRecord = out.data
            if done.status is TaskStatus.COMPLETED:
                await resp.write(_line(100, f"Saving {images} to system ..."))
                await resp.write(_line(100, "Finished", images=await results(ctx, done, req.require_base64,
                                                                              ctx.file_urls(request))))
            elif done.status is TaskStatus.FAILED:
                await resp.write(_line(last, f"Failed: {done.error_message}"))
            else:
                await resp.write(_line(last, "Stopped"))
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


LISTS = {"history": [s for s in TaskStatus if s.is_terminal()], "current": [TaskStatus.PROCESSING],
         "pending": [TaskStatus.PENDING]}


@DOCS.route("GET", "/tasks", "Task history: history, current and pending", response=TaskLists, errors=(401, 422),
            params=(apidoc.Param("query", schema={"enum": ["all", "current", "pending", "history"], "default": "all"}),
                    apidoc.Param("page", schema={"type": "integer", "minimum": 0, "default": 0}),
                    apidoc.Param("page_size", schema={"type": "integer", "minimum": 1, "maximum": 100}),
                    *TIME_PARAMS, apidoc.Param("action", schema={"enum": ["delete"]},
                                               description="delete the finished tasks from start_at to end_at")))
async def tasks(request: web.Request) -> web.Response:
    """GET /tasks?query=all|current|pending|history&page=&page_size=&start_at=&end_at=[&action=delete]:
    always {history, current, pending}. action=delete deletes the finished tasks in the time range
    (rows and result images; inputs stay)."""
    ctx = request.app[CTX]
    who = principal(request)
    query = request.query.get("query", "all")
    if query not in ("all", *LISTS):
        raise history.query_error("query", "one of all, current, pending, history")
    deleted = set()
    if request.query.get("action") == "delete":
        if "start_at" not in request.query:
            raise history.query_error("start_at", "action=delete needs start_at (and end_at, default now)")
        deleted = {r.task_id for r in await history.delete_all(request, who, history.task_list(request, who, []))}
    elif request.query.get("action"):
        raise history.query_error("action", "the only action is delete")
    file_url = ctx.file_urls(request)
    out: dict[str, list] = {name: [] for name in LISTS}
    for name, statuses in LISTS.items():
        if query in ("all", name):
            page = await ctx.tasks.page(history.task_list(request, who, statuses, first_page=0))
            out[name] = [await _view(ctx, r, file_url) for r in page.tasks if r.task_id not in deleted]
    return web.json_response(out)


@DOCS.route("GET", "/tasks/{task_id}", "One task", response=TaskObject, errors=(401, 404))
async def task(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    record = await ctx.tasks.get(request.match_info["task_id"], principal(request))
    return web.json_response(await _view(ctx, record, ctx.file_urls(request)))


@DOCS.route("GET", "/v1/engines/all-models", "Model and LoRA file names", response=AllModels, errors=(401,))
async def all_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    principal(request)
    details = [{"name": m.name, "family": (info := ctx.workers.model_info(m.name)) and info.family,
                "width": ctx.workers.default_size(m)[0], "height": ctx.workers.default_size(m)[1]}
               for m in ctx.config.models]
    return web.json_response({"model_filenames": [m.name for m in ctx.config.models],
                              "lora_filenames": sorted(ctx.loras.available(ctx.config.default_model)),
                              "models": details})


@DOCS.route("GET", "/v1/engines/styles", "Style names", response=list[str], errors=(401,))
async def style_names(request: web.Request) -> web.Response:
    principal(request)
    return web.json_response(sorted(styles(request.app[CTX].config)))


@DOCS.route("POST", "/v1/engine/control", "Stop the calling key's running task", response=ControlReply,
            errors=(401, 422), params=(apidoc.Param("action", schema={"enum": ["stop", "skip"], "default": "stop"}),))
async def control(request: web.Request) -> web.Response:
    """POST /v1/engine/control?action=stop|skip: end the calling key's running task. diffbus makes a
    task's images together, so skip (Fooocus: on to the next image) stops the task like stop."""
    ctx = request.app[CTX]
    who = principal(request)
    action = request.query.get("action", "stop")
    if action not in ("stop", "skip"):
        raise history.query_error("action", "one of stop, skip")
    running = await ctx.tasks.page(TaskList(owner=who.owner, statuses=[TaskStatus.PROCESSING]))
    for record in running.tasks:
        await ctx.tasks.cancel(record.task_id, who)
    return web.json_response({"message": f"{action}: {len(running.tasks)} task(s)",
                              "task_ids": [r.task_id for r in running.tasks]})


@DOCS.route("GET", "/ping", "Is the service up", security=(), response={"const": "pong"}, media_type="text/plain")
async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


def register(app: web.Application) -> None:
    app.router.add_post("/v1/engine/generate/", generate)
    app.router.add_post("/v1/engine/generate", generate)
    app.router.add_get("/tasks", tasks)
    app.router.add_get("/tasks/{task_id}", task)
    app.router.add_get("/v1/engines/all-models", all_models)
    app.router.add_get("/v1/engines/styles", style_names)
    app.router.add_post("/v1/engine/control", control)
    app.router.add_get("/ping", ping)
