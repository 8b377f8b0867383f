"""The sd_work_manager dialect (seeds/sd_work_manager.md): POST /api/Task/* with the X-API-SECRET header,
replies wrapped as {code, msg, data}. Task ids are numbers: the TASKS stream sequence of the task's
`accepted` event, so the same task is readable in every dialect.

The original answers every error with HTTP 200 and a code; diffbus sends the same body with a 4xx/5xx
status (sdwm.error_http_status: false restores the original's 200)."""

import base64
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from aiohttp import web

from schemas.events import TaskStatus
from schemas.jobs import Img2Img, Inpaint, Upscale
from schemas.queries import TaskRecord

from . import apidoc, seed_examples, validation
from . import request as request_layer
from .auth import Principal
from .context import CTX
from .errors import RENDERERS, ApiError
from .inputs import InputImage
from .request import GenerationRequest

DIALECT = "sdwm"
PREFIX = "/api/Task/"
OK, MISSING_ARGUMENT, BAD_ARGUMENT, INTERNAL_ERROR, AUTHORIZE_FAILED = 0, -100, -101, -102, -103
STATUS = {TaskStatus.PENDING: 0, TaskStatus.PROCESSING: 1, TaskStatus.COMPLETED: 2, TaskStatus.FAILED: 3,
          TaskStatus.CANCELLED: 3}
CODE_FOR_STATUS = {400: BAD_ARGUMENT, 401: AUTHORIZE_FAILED, 413: BAD_ARGUMENT, 422: BAD_ARGUMENT}


class Reject(Exception):
    def __init__(self, code: int, msg: str, status: int = 400):
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


def envelope(code: int, msg: str, data=None) -> dict:
    return {"code": code, "msg": msg, "data": data}


def error_shape(status: int, detail) -> dict:
    """Errors raised before a handler runs (body too large, wrong method) in the dialect's shape."""
    return envelope(CODE_FOR_STATUS.get(status, INTERNAL_ERROR), _words(detail))


# The sd_work_manager name of each neutral request field (for errors).
NAMES = {"steps": ["steps"], "guidance_scale": ["scale"], "num_images": ["count"], "prompt": ["prompts"],
         "negative_prompt": ["negativePrompts"], "init_image": ["initialImages", 0], "strength": ["denoise"],
         "model": ["module"], "loras": ["module"], "seed": ["seed"]}


def _words(detail) -> str:
    if isinstance(detail, list):
        return "; ".join(": ".join(filter(None, (".".join(str(p) for p in d["loc"][1:]), d["msg"])))
                         for d in detail)
    return str(detail)


# The original's argument types: what each field must be, and whether it may be left out.
NUMBER, STRING, ARRAY = (int, float), (str,), (list,)
TXT2IMG = {"width": NUMBER, "height": NUMBER, "prompts": STRING, "negativePrompts": STRING, "count": NUMBER,
           "steps": NUMBER, "scale": NUMBER}
IMG2IMG = {"width": NUMBER, "height": NUMBER, "initialImages": ARRAY, "prompts": STRING, "negativePrompts": STRING,
           "steps": NUMBER, "scale": NUMBER, "denoise": NUMBER, "resizeMode": NUMBER}
UPSCALE = {"image": STRING, "scale": NUMBER}
OPTIONAL = {"seed": NUMBER, "module": STRING, "comment": STRING}


class Envelope(msgspec.Struct):
    """Every reply: code 0 and msg "ok" with data, or a negative code and the reason."""

    code: int  # 0 ok, -100 missing argument, -101 bad argument, -102 internal error, -103 authorize failed
    msg: str
    data: None = None


class Submitted(Envelope):
    data: int | None = None  # the task id


class TaskState(msgspec.Struct):
    id: int
    status: int  # 0 pending, 1 running, 2 finished, 3 failed or cancelled
    type: int  # 0 txt2img, 1 img2img, 2 upscale
    comment: str | None
    errMsg: str | None
    progress: float  # 0-1
    resultImages: list[str] | None  # base64 PNGs
    resultSeed: int | None
    resultWidth: int | None
    resultHeight: int | None


class StateReply(Envelope):
    data: TaskState | None = None  # None: no such task


def body_schema(required: dict, optional: dict = OPTIONAL) -> dict:
    """The JSON Schema of what `arguments` accepts."""
    kinds = {NUMBER: {"type": "number"}, STRING: {"type": "string"},
             ARRAY: {"type": "array", "items": {"type": "string"}}}
    return {"type": "object", "required": list(required),
            "properties": {name: kinds[types] for name, types in {**required, **optional}.items()}}


DOCS = apidoc.Docs(DIALECT, "sd_work_manager (seed sd_work_manager.md): POST only, the X-API-SECRET header, "
                   "replies in {code, msg, data}; task ids are numbers.", security=("ApiSecret",),
                   error_model=Envelope)


def arguments(body, required: dict, optional: dict = OPTIONAL) -> dict:
    if not isinstance(body, dict):
        raise Reject(BAD_ARGUMENT, "the request body must be a JSON object")
    for name, types in {**required, **optional}.items():
        value = body.get(name)
        if value is None:
            if name in required:
                raise Reject(MISSING_ARGUMENT, f"Missing argument {name}")
        elif not isinstance(value, types) or isinstance(value, bool) and types is NUMBER:
            raise Reject(BAD_ARGUMENT, f"Argument {name} invalid type")
    return body


def principal(request: web.Request) -> Principal:
    config = request.app[CTX].config.sdwm
    given = request.headers.get("X-API-SECRET", "")
    if not config.secret or not hmac.compare_digest(given.encode(), config.secret.encode()):
        raise Reject(AUTHORIZE_FAILED, "Authorize failed", 401)
    return Principal(owner=request.app[CTX].config.sdwm_owner)


def handler(fn: Callable[[web.Request, Principal, dict], Awaitable]) -> Callable:
    """Authenticate, read the body, run, and wrap the result or the error in {code, msg, data}."""
    async def wrapped(request: web.Request) -> web.Response:
        config = request.app[CTX].config.sdwm
        try:
            who = principal(request)
            data = await fn(request, who, await validation.read_json(request))
        except Reject as e:
            code, msg, status, headers = e.code, e.msg, e.status, None
        except ApiError as e:
            code, msg, status = CODE_FOR_STATUS.get(e.status, INTERNAL_ERROR), _words(e.detail), e.status
            headers = e.headers  # Retry-After of a 429
        else:
            return web.json_response(envelope(OK, "ok", data))
        return web.json_response(envelope(code, msg), status=status if config.error_http_status else 200,
                                 headers=headers)
    return wrapped


def _module(ctx, name: str | None) -> tuple[str | None, list[tuple[str, float]]]:
    """`module` names a model or, failing that, a LoRA of the default model: (model, loras)."""
    if not name:
        return None, []
    if ctx.config.model(name) is not None:
        return name, []
    if Path(name).stem in ctx.loras.available(ctx.config.default_model):
        return None, [(Path(name).stem, 1.0)]
    raise Reject(BAD_ARGUMENT, f"unknown module {name!r}: neither a model nor a LoRA")


def to_request(args: dict, module: tuple[str | None, list], images: list[InputImage]) -> GenerationRequest:
    """The neutral request of a checked submitTxt2ImgTask / submitImg2ImgTask body (img2img: its initial
    images decoded and resized; one image from each)."""
    model, loras = module
    out = GenerationRequest(
        prompt=args["prompts"] or " ", negative_prompt=args["negativePrompts"], model=model, loras=loras,
        steps=int(args["steps"]), guidance_scale=args["scale"], names=NAMES,
        seed=int(args["seed"]) if args.get("seed") is not None else None)
    if images:
        out.init_image, out.more_init_images, out.strength = images[0], images[1:], args["denoise"]
    else:
        out.width, out.height, out.num_images = int(args["width"]), int(args["height"]), int(args["count"])
    return out


def _checked(neutral, config):
    """The original answers a bad argument with 400 (-101); the layer's limit checks say which."""
    try:
        (request_layer.check_upscale if isinstance(neutral, request_layer.UpscaleRequest)
         else request_layer.check)(neutral, config)
    except ApiError as e:
        raise Reject(BAD_ARGUMENT, _words(e.detail)) from None
    return neutral


async def _submit(request: web.Request, who: Principal, spec, args: dict) -> int:
    params = {k: v for k, v in args.items() if k not in ("initialImages", "image")}
    record = await request.app[CTX].tasks.submit(spec, who, dialect=DIALECT, request=params)
    return record.number


@DOCS.route("POST", PREFIX + "submitTxt2ImgTask", "Submit a txt2img task", body=body_schema(TXT2IMG),
            response=Submitted, errors=(400, 401, 422, 429), examples=seed_examples.SDWM_TXT2IMG)
@handler
async def submit_txt2img(request: web.Request, who: Principal, body) -> int:
    ctx = request.app[CTX]
    args = arguments(body, TXT2IMG)
    neutral = _checked(to_request(args, _module(ctx, args.get("module")), []), ctx.config)
    spec = await request_layer.build(ctx, neutral)
    return await _submit(request, who, spec, args)


@DOCS.route("POST", PREFIX + "submitImg2ImgTask", "Submit an img2img task", body=body_schema(IMG2IMG),
            response=Submitted, errors=(400, 401, 422, 429), examples=seed_examples.SDWM_IMG2IMG)
@handler
async def submit_img2img(request: web.Request, who: Principal, body) -> int:
    """One image from each initial image, each first resized to width×height by resizeMode
    (0 stretch, 1 crop, 2 fit and fill: A1111's modes)."""
    ctx = request.app[CTX]
    args = arguments(body, IMG2IMG)
    images, (width, height), mode = args["initialImages"], (int(args["width"]), int(args["height"])), int(args["resizeMode"])
    if not images or not all(isinstance(i, str) for i in images):
        raise Reject(BAD_ARGUMENT, "initialImages must be a non-empty list of base64 images")
    if len(images) > ctx.config.limits.max_images:
        raise Reject(BAD_ARGUMENT, f"at most {ctx.config.limits.max_images} initialImages")
    resized = [await validation.resized_image(image, ["initialImages", i], width, height, mode, ctx.config)
               for i, image in enumerate(images)]
    neutral = _checked(to_request(args, _module(ctx, args.get("module")), resized), ctx.config)
    spec = await request_layer.build(ctx, neutral)
    return await _submit(request, who, spec, args)


@DOCS.route("POST", PREFIX + "submitUpscaleTask", "Submit an upscale task",
            body=body_schema(UPSCALE, {"comment": STRING}), response=Submitted, errors=(400, 401, 422, 429),
            examples=seed_examples.SDWM_UPSCALE)
@handler
async def submit_upscale(request: web.Request, who: Principal, body) -> int:
    ctx = request.app[CTX]
    args = arguments(body, UPSCALE, {"comment": STRING})
    image = await validation.input_image(args["image"], "image", ctx.config)
    spec = await request_layer.build_upscale(ctx, _checked(request_layer.UpscaleRequest(
        image=image, scale=args["scale"], upscaler=request_layer.default_upscaler(ctx.config)), ctx.config))
    return await _submit(request, who, spec, args)


def task_type(record: TaskRecord) -> int:
    return 2 if isinstance(record.spec, Upscale) else 1 if isinstance(record.spec, (Img2Img, Inpaint)) else 0


@DOCS.route("POST", PREFIX + "getTaskState", "A task's state and results", body=body_schema({"taskId": NUMBER}, {}),
            response=StateReply, errors=(400, 401, 422), examples=seed_examples.SDWM_STATE)
@handler
async def get_task_state(request: web.Request, who: Principal, body) -> dict | None:
    ctx = request.app[CTX]
    args = arguments(body, {"taskId": NUMBER}, {})
    try:
        record = await ctx.tasks.get_number(int(args["taskId"]), who)
    except ApiError as e:
        if e.status == 404:
            return None  # as the original: unknown ids answer data null
        raise
    progress = 1.0 if record.status is TaskStatus.COMPLETED else 0.0
    if record.status is TaskStatus.PROCESSING and (last := await ctx.tasks.last_progress(record.task_id)):
        progress = last.fraction
    images = [base64.b64encode(await ctx.tasks.storage.get(i.key) or b"").decode() for i in record.images]
    first = record.images[0] if record.images else None
    error = record.error_message or ("cancelled" if record.status is TaskStatus.CANCELLED else None)
    return msgspec.to_builtins(TaskState(
        id=record.number, status=STATUS[record.status], type=task_type(record),
        comment=(record.request or {}).get("comment"), errMsg=error, progress=progress,
        resultImages=images or None, resultSeed=getattr(record.spec, "seed", None) if first else None,
        resultWidth=first.width if first else None, resultHeight=first.height if first else None))


def register(app: web.Application) -> None:
    app[RENDERERS].append((PREFIX, error_shape))
    for name, fn in (("submitTxt2ImgTask", submit_txt2img), ("submitImg2ImgTask", submit_img2img),
                     ("submitUpscaleTask", submit_upscale), ("getTaskState", get_task_state)):
        app.router.add_post(PREFIX + name, fn)
