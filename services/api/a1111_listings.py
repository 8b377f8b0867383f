"""The AUTOMATIC1111 dialect's options and read-only routes (A1111 1.10 modules/api/api.py), each in
A1111's shape: real content where diffbus has it, an empty list where it has no such thing (scripts,
extensions, hypernetworks, face restorers, VAEs, embeddings), so clients that read them all work.
Replies are encoded from the Structs in a1111_replies, the same ones the OpenAPI document shows."""

import json
import os
from pathlib import Path

from aiohttp import web

from schemas.jobs import LATENT_UPSCALER

from . import samplers, seed_examples, validation
from . import styles as prompt_styles
from .a1111 import DOCS, NOTHING, PREFIX, STATE, model_named, principal
from .a1111_replies import (Embeddings, Extension, FaceRestorer, Hypernetwork, LatentUpscaleMode, Lora, Memory,
                            PromptStyle, RealesrganModel, Sampler, ScheduleType, ScriptInfo, ScriptsList, SdModel,
                            SdVae, Upscaler)
from .context import CTX
from .errors import invalid
from .replies import json_reply

MAX_OPTIONS_CHARS = 64 * 1024  # a key's stored options (a KV value)
UPSCALER_SCALE = 4  # every configured upscaler model is a ×4 network; Lanczos and Nearest resize to any scale
OPTION_DEFAULTS = {"sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1, "samples_format": "png",
                   "sd_checkpoint_hash": None, "eta_noise_seed_delta": 0}


@DOCS.route("GET", PREFIX + "options", "This key's options", response={"type": "object"}, errors=(401,))
@DOCS.route("POST", PREFIX + "options", "Set this key's options (sd_model_checkpoint: its default model)",
            body=dict, response=NOTHING, errors=(401, 422), examples=seed_examples.A1111_OPTIONS)
async def options(request: web.Request) -> web.Response:
    """GET/POST /sdapi/v1/options: per key; sd_model_checkpoint is that key's default model. What GET
    answers can be POSTed back whole."""
    ctx = request.app[CTX]
    who = principal(request)
    stored = {"sd_model_checkpoint": ctx.config.default_model, **OPTION_DEFAULTS,
              **await request.app[STATE].get("options", who.owner, {})}
    if request.method == "POST":
        body = await validation.read_json(request)
        if not isinstance(body, dict):
            raise invalid([], "expected an object of options")
        if body.get("sd_model_checkpoint") is not None:
            name = model_named(str(body["sd_model_checkpoint"]), ctx.config)
            if name is None:
                raise invalid(["sd_model_checkpoint"], f"unknown model {body['sd_model_checkpoint']!r}")
            body = {**body, "sd_model_checkpoint": name}
        stored.update(body)
        if len(json.dumps(stored)) > MAX_OPTIONS_CHARS:
            raise invalid([], f"options are limited to {MAX_OPTIONS_CHARS} characters of JSON")
        await request.app[STATE].put("options", who.owner, stored)
        return web.json_response(None)
    return web.json_response(stored)


@DOCS.route("GET", PREFIX + "cmd-flags", "Command-line flags, as a server started for the API has them",
            response={"type": "object"}, errors=(401,))
async def cmd_flags(request: web.Request) -> web.Response:
    principal(request)
    api = request.app[CTX].config.api
    return web.json_response({"api": True, "nowebui": True, "listen": api.host not in ("127.0.0.1", "localhost"),
                              "port": api.port, "api_auth": None, "api_log": False, "api_server_stop": False,
                              "lowvram": False, "medvram": False, "no_half": False, "xformers": False,
                              "enable_insecure_extension_access": False, "hide_ui_dir_config": True})


@DOCS.route("GET", PREFIX + "sd-models", "The configured models", response=list[SdModel], errors=(401,))
async def sd_models(request: web.Request) -> web.Response:
    principal(request)
    ctx = request.app[CTX]
    return json_reply([sd_model(m, ctx.workers.model_info(m.name), ctx.workers.default_size(m))
                       for m in ctx.config.models])


def sd_model(m, info, size: tuple[int, int]) -> SdModel:
    """One /sdapi/v1/sd-models entry: the title carries the checkpoint file's short sha256 (10 digits, as
    A1111 computes it) once a worker serving the model announced it; family and default size beside."""
    sha256 = info.sha256 if info else None
    short = sha256[:10] if sha256 else None
    return SdModel(title=f"{m.name} [{short}]" if short else m.name, model_name=m.name, hash=short, sha256=sha256,
                   filename=Path(m.checkpoint or m.path or m.name).name, config=None,
                   family=info.family if info else None, width=size[0], height=size[1])


@DOCS.route("GET", PREFIX + "samplers", "Sampler names", response=list[Sampler], errors=(401,))
async def sampler_list(request: web.Request) -> web.Response:
    principal(request)
    return json_reply([Sampler(**item) for item in samplers.listing()])


@DOCS.route("GET", PREFIX + "schedulers", "Schedule types txt2img runs (by name or label)",
            response=list[ScheduleType], errors=(401,))
async def schedule_list(request: web.Request) -> web.Response:
    principal(request)
    return json_reply([ScheduleType(name=s.name, label=s.label, aliases=s.aliases, default_rho=s.default_rho,
                                    need_inner_model=s.need_inner_model) for s in samplers.usable_schedule_types()])


@DOCS.route("GET", PREFIX + "upscalers", "Upscalers (\"None\" first, as A1111)", response=list[Upscaler],
            errors=(401,))
async def upscaler_list(request: web.Request) -> web.Response:
    principal(request)
    config = request.app[CTX].config
    models = {u.name for u in config.upscalers}
    return json_reply([Upscaler(name=n, model_name=n if n in models else None, model_path=None, model_url=None,
                                scale=UPSCALER_SCALE) for n in ["None", *config.upscaler_names]])


@DOCS.route("GET", PREFIX + "latent-upscale-modes", "Latent upscale modes for hr_upscaler",
            response=list[LatentUpscaleMode], errors=(401,))
async def latent_upscale_modes(request: web.Request) -> web.Response:
    principal(request)
    return json_reply([LatentUpscaleMode(name=LATENT_UPSCALER)])


@DOCS.route("GET", PREFIX + "realesrgan-models", "The configured upscaler models", response=list[RealesrganModel],
            errors=(401,))
async def realesrgan_models(request: web.Request) -> web.Response:
    principal(request)
    return json_reply([RealesrganModel(name=u.name, path=None, scale=UPSCALER_SCALE)
                       for u in request.app[CTX].config.upscalers])


@DOCS.route("GET", PREFIX + "prompt-styles", "Prompt styles, usable in `styles`", response=list[PromptStyle],
            errors=(401,))
async def prompt_style_list(request: web.Request) -> web.Response:
    principal(request)
    return json_reply([PromptStyle(name=s["name"], prompt=s.get("prompt", ""),
                                   negative_prompt=s.get("negative_prompt", ""))
                       for s in prompt_styles.load(request.app[CTX].config).values()])


@DOCS.route("GET", PREFIX + "loras", "LoRA files", response=list[Lora], errors=(401,))
async def lora_list(request: web.Request) -> web.Response:
    principal(request)
    ctx = request.app[CTX]
    files = ctx.loras.available(ctx.config.default_model)
    return json_reply([Lora(name=n, alias=n, path=n, metadata={"sha256": h}) for n, h in sorted(files.items())])


@DOCS.route("GET", PREFIX + "embeddings", "Textual-inversion embeddings (diffbus loads none)", response=Embeddings,
            errors=(401,))
async def embeddings(request: web.Request) -> web.Response:
    principal(request)
    return json_reply(Embeddings(loaded={}, skipped={}))


def _ram() -> dict:
    """This API process's memory, as A1111 reports its own: {free, used, total} in bytes."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        used = int(Path("/proc/self/statm").read_text().split()[1]) * page
    except (OSError, ValueError, IndexError):
        return {"error": "unavailable"}
    return {"free": total - used, "used": used, "total": total}


@DOCS.route("GET", PREFIX + "memory", "Memory of the API process (GPUs are on the workers: see /health)",
            response=Memory, errors=(401,))
async def memory(request: web.Request) -> web.Response:
    principal(request)
    return json_reply(Memory(ram=_ram(), cuda={"error": "unavailable: GPUs are on the workers, see /health"}))


@DOCS.route("GET", PREFIX + "scripts", "Scripts (diffbus runs none)", response=ScriptsList, errors=(401,))
async def scripts(request: web.Request) -> web.Response:
    principal(request)
    return json_reply(ScriptsList(txt2img=[], img2img=[]))


def empty_list(description: str, item: type):
    """A route answering [] in A1111's list shape."""
    async def handler(request: web.Request) -> web.Response:
        principal(request)
        return web.json_response([])

    handler.__doc__ = description
    return handler, item


EMPTY_LISTS = {
    "script-info": empty_list("Script arguments (diffbus runs no scripts)", ScriptInfo),
    "extensions": empty_list("Extensions (diffbus has none)", Extension),
    "hypernetworks": empty_list("Hypernetworks (not supported)", Hypernetwork),
    "face-restorers": empty_list("Face restorers (not supported)", FaceRestorer),
    "sd-vae": empty_list("VAEs to pick (each model uses its own VAE)", SdVae),
    "sd-modules": empty_list("Forge's VAE / text-encoder modules (each model uses its own)", SdVae),
}
NO_OPS = ("refresh-checkpoints", "refresh-loras", "refresh-vae", "refresh-embeddings", "unload-checkpoint",
          "reload-checkpoint")


async def no_op(request: web.Request) -> web.Response:
    """Models and LoRAs are read from config and the workers; nothing to refresh, load or unload."""
    principal(request)
    return web.json_response(None if "refresh" in request.path else {})


for _path in NO_OPS:
    DOCS.route("POST", PREFIX + _path, f"{_path} (a no-op)", response=NOTHING, errors=(401,))(no_op)
for _path, (_handler, _item) in EMPTY_LISTS.items():
    DOCS.route("GET", PREFIX + _path, _handler.__doc__, response=list[_item], errors=(401,))(_handler)


def register(app: web.Application) -> None:
    app.router.add_post(PREFIX + "options", options)
    for path in NO_OPS:
        app.router.add_post(PREFIX + path, no_op)
    for path, handler in (("options", options), ("cmd-flags", cmd_flags), ("sd-models", sd_models),
                          ("samplers", sampler_list), ("schedulers", schedule_list), ("upscalers", upscaler_list),
                          ("latent-upscale-modes", latent_upscale_modes), ("realesrgan-models", realesrgan_models),
                          ("prompt-styles", prompt_style_list), ("loras", lora_list), ("embeddings", embeddings),
                          ("memory", memory), ("scripts", scripts)):
        app.router.add_get(PREFIX + path, handler)
    for path, (handler, _) in EMPTY_LISTS.items():
        app.router.add_get(PREFIX + path, handler)
