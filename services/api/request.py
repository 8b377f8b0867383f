"""The request layer under the dialects: one neutral generation request (and one upscale request) every
dialect maps its own request to, and the one builder that turns it into a JobSpec for all of them alike:
limits checked, defaults filled in, seed chosen, LoRAs resolved, input images stored.

A dialect's mapping is pure: its validated request (and its decoded input images) in, a neutral request
out. The neutral request carries `names`, the dialect's own name of each neutral field, so an error the
builder finds names the field the client sent (`steps` for A1111, `overwrite_step` for FooocusAPI)."""

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from schemas.jobs import (
    LATENT_UPSCALER,
    SCHEDULERS,
    HiresFix,
    Img2Img,
    Inpaint,
    InpaintFill,
    JobSpec,
    Outpaint,
    OutputFormat,
    Txt2Img,
    Upscale,
)

from . import samplers
from .errors import ApiError, invalid
from .inputs import InputImage

SEED_RANGE = 2**32
OUTPUT_FORMATS = {"png": OutputFormat.PNG, "jpg": OutputFormat.JPEG, "jpeg": OutputFormat.JPEG,
                  "webp": OutputFormat.WEBP}


@dataclass(frozen=True)
class InpaintOptions:
    mask_blur: int = 4
    fill: InpaintFill = InpaintFill.ORIGINAL
    full_res: bool = False
    full_res_padding: int = 32
    invert_mask: bool = False


@dataclass(frozen=True)
class HiresRequest:
    """The hires fix: generate, upscale by `scale`, then an img2img pass at `denoising_strength`."""

    scale: float = 2.0
    upscaler: str = LATENT_UPSCALER
    steps: int = 0  # 0: the first pass's steps
    denoising_strength: float = 0.7


@dataclass(kw_only=True)
class GenerationRequest:
    """What any dialect asks for, in one vocabulary. None: the configured or the model's default."""

    prompt: str  # may hold <lora:name:weight> tags
    negative_prompt: str = ""
    model: str | None = None
    loras: list[tuple[str, float]] = field(default_factory=list)
    width: int | None = None  # txt2img; img2img keeps the input's size
    height: int | None = None
    num_images: int = 1
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None  # a diffusers class name
    scheduler_options: dict = field(default_factory=dict)
    # the A1111 sampler `scheduler` was resolved from: on a flow-matching model (SD3, Flux) the builder
    # maps it to that family's flow-matching scheduler, or refuses it
    sampler: samplers.Resolution | None = None
    true_cfg_scale: float | None = None  # Flux: real CFG, needed for a negative prompt (2x the work)
    # Forge's `distilled_cfg_scale`: on a model with distilled guidance (Flux dev) it is that guidance and
    # `guidance_scale` (Forge's cfg_scale) is real CFG, off at 1; other models ignore it, as Forge does
    distilled_guidance: float | None = None
    # negative text a template added (Fooocus styles), not the client's own: where a model takes a
    # negative prompt only with true CFG and none was asked for, it is left out rather than refused
    style_negative: str = ""
    seed: int | None = None  # None or -1: random
    seed_increment: bool = True
    output_format: OutputFormat = OutputFormat.PNG
    quality: int = 95
    metadata: str | None = "a1111"
    init_image: InputImage | None = None  # present: img2img (with mask_image or outpaint: inpaint)
    more_init_images: list[InputImage] = field(default_factory=list)  # one image more from each
    strength: float | None = None
    mask_image: InputImage | None = None
    inpaint: InpaintOptions = field(default_factory=InpaintOptions)
    outpaint: Outpaint | None = None
    hires: HiresRequest | None = None
    names: Mapping[str, list] = field(default_factory=dict)  # neutral field -> the dialect's loc

    def invalid(self, name: str, msg: str) -> ApiError:
        return invalid(list(self.names.get(name, [name])), msg)


@dataclass(kw_only=True)
class UpscaleRequest:
    image: InputImage
    scale: float = 2.0
    upscaler: str = "Lanczos"
    size: tuple[int, int] | None = None  # None: round(input size × scale)
    output_format: OutputFormat = OutputFormat.PNG
    quality: int = 95
    names: Mapping[str, list] = field(default_factory=dict)

    def invalid(self, name: str, msg: str) -> ApiError:
        return invalid(list(self.names.get(name, [name])), msg)


def output_format(value: str) -> OutputFormat:
    return OUTPUT_FORMATS[value.lower()]


def default_upscaler(config) -> str:
    """For dialects whose upscale names no upscaler: fooocus.upscaler, else the first configured model,
    else Lanczos."""
    return config.fooocus.upscaler or next((u.name for u in config.upscalers), "Lanczos")


def _range(req, name: str, value, low, high, unit: str = "") -> None:
    if value is not None and not low <= value <= high:
        raise req.invalid(name, f"must be between {low} and {high}{unit}")


def check(req: GenerationRequest, config) -> None:
    """Every limit (services.config.Limits) and range, whichever dialect the request came from."""
    limits = config.limits
    for name in ("prompt", "negative_prompt"):
        if len(getattr(req, name) or "") > limits.max_prompt_chars:
            raise req.invalid(name, f"at most {limits.max_prompt_chars} characters")
    if req.model is not None and config.model(req.model) is None:
        raise req.invalid("model", f"unknown model {req.model!r}; one of {[m.name for m in config.models]}")
    for axis, value, top in (("width", req.width, limits.max_width), ("height", req.height, limits.max_height)):
        if value is not None and value % 8:
            raise req.invalid(axis, f"{axis} must be a multiple of 8")
        _range(req, axis, value, limits.min_size, top)
    _range(req, "num_images", req.num_images, 1, limits.max_images)
    _range(req, "steps", req.steps, 1, limits.max_steps)
    _range(req, "guidance_scale", req.guidance_scale, 0, limits.max_guidance_scale)
    _range(req, "seed", req.seed, -1, SEED_RANGE - 1)
    _range(req, "strength", req.strength, 0, 1)
    if req.scheduler is not None and req.scheduler not in SCHEDULERS:
        raise req.invalid("scheduler", f"unknown scheduler; one of {list(SCHEDULERS)}")
    if req.hires is not None:
        if req.hires.upscaler not in (LATENT_UPSCALER, *config.upscaler_names):
            raise req.invalid("hr_upscaler", f"unknown upscaler; one of {[LATENT_UPSCALER, *config.upscaler_names]}")
        _range(req, "hr_scale", req.hires.scale, 1, 4)
        _range(req, "hr_steps", req.hires.steps, 0, limits.max_steps)
        _range(req, "denoising_strength", req.hires.denoising_strength, 0, 1)


def _first(*values):
    return next(v for v in values if v is not None)


def _scheduler_for(req: GenerationRequest, model, info) -> tuple[str | None, dict]:
    """The scheduler as the model's family runs it (as a worker announced the model), and what the
    family cannot do answered 422 before anything is queued: a sampler or scheduler class of the other
    kind (flow-matching or not), Flux's negative prompt without true CFG."""
    scheduler, options = req.scheduler or model.scheduler, req.scheduler_options
    if req.sampler is not None and req.scheduler is not None:
        try:
            chosen = samplers.for_model(req.sampler, info)
        except samplers.Refused as e:
            raise req.invalid("scheduler", str(e)) from None
        scheduler, options = chosen.scheduler, chosen.options
    refusal = samplers.class_refusal(scheduler, info)
    if refusal:
        raise req.invalid("scheduler", refusal)
    if _without_true_cfg(req, info) and (req.negative_prompt or "").strip():
        raise req.invalid("negative_prompt", f"a {info.family} model takes a negative prompt only with true CFG: "
                                             "set true_cfg_scale above 1 (twice the work per step) or leave it empty")
    return scheduler, options


def configured_model(name: str, config) -> str | None:
    """A configured model by name, file name or file stem (clients send "x.safetensors")."""
    for model in config.models:
        files = [Path(p).name for p in (model.path, model.checkpoint) if p]
        if name in (model.name, *files) or Path(name).stem in (model.name, *(Path(f).stem for f in files)):
            return model.name
    return None


def _forge_guidance(req: GenerationRequest, info) -> GenerationRequest:
    if req.distilled_guidance is None or info is None or not info.negative_needs_true_cfg:
        return req
    true_cfg = req.true_cfg_scale
    if true_cfg is None and (req.guidance_scale or 0) > 1:
        true_cfg = req.guidance_scale
    return replace(req, guidance_scale=req.distilled_guidance, true_cfg_scale=true_cfg)


def _without_true_cfg(req: GenerationRequest, info) -> bool:
    """The model takes a negative prompt only with true CFG (Flux), and the request does not ask for it."""
    return info is not None and info.negative_needs_true_cfg and not (req.true_cfg_scale or 0) > 1


def _negative(req: GenerationRequest, info) -> str:
    parts = [req.negative_prompt] + ([] if _without_true_cfg(req, info) else [req.style_negative])
    return ", ".join(part for part in parts if part)


async def build(ctx, req: GenerationRequest) -> JobSpec:
    """The JobSpec of a neutral request: limits checked, defaults filled in, seed chosen, images stored."""
    config = ctx.config
    check(req, config)
    model = config.model(req.model or config.default_model)
    prompt, loras = await ctx.loras.resolve(req.prompt, req.loras, model.name, req.names.get("loras", ["loras"]))
    info = ctx.workers.model_info(model.name)
    req = _forge_guidance(req, info)
    steps = req.steps or model.steps or (info and info.steps) or config.defaults.steps
    scheduler, options = _scheduler_for(req, model, info)
    common = dict(
        model=model.name, model_hash=info and info.sha256 and info.sha256[:10], prompt=prompt, loras=loras,
        negative_prompt=_negative(req, info), num_images=req.num_images, steps=steps,
        guidance_scale=_first(req.guidance_scale, model.guidance_scale, info and info.guidance_scale,
                              config.defaults.guidance_scale), true_cfg_scale=req.true_cfg_scale,
        scheduler=scheduler, scheduler_options=options,
        seed=secrets.randbelow(SEED_RANGE) if req.seed in (None, -1) else req.seed,
        seed_increment=req.seed_increment, metadata=req.metadata, output_format=req.output_format,
        quality=req.quality)
    if req.init_image is None:
        if req.mask_image is not None or req.outpaint is not None:
            raise req.invalid("init_image", "inpaint (a mask) and outpaint need an init image")
        default_width, default_height = ctx.workers.default_size(model)
        width, height = req.width or default_width, req.height or default_height
        return Txt2Img(width=width, height=height, hires=hires_fix(req, width, height, steps, config), **common)
    if req.hires is not None:
        raise req.invalid("hires", "the hires fix is for txt2img; it cannot be used with an init image")
    return await _from_image(ctx, req, common)


async def _from_image(ctx, req: GenerationRequest, common: dict) -> Img2Img | Inpaint:
    config, image = ctx.config, req.init_image
    margins = req.outpaint or Outpaint()
    width, height = image.width + margins.left + margins.right, image.height + margins.top + margins.bottom
    if min(width, height) < config.limits.min_size:
        raise req.invalid("init_image", f"image must be at least {config.limits.min_size} pixels a side")
    strength = config.defaults.strength if req.strength is None else req.strength
    if int(common["steps"] * strength) < 1 and req.inpaint.fill != InpaintFill.LATENT_NOISE:
        raise req.invalid("strength", "strength × steps must give at least one step")
    if req.mask_image is None and req.outpaint is None:
        more = [await ctx.tasks.store_input(i) for i in req.more_init_images]
        return Img2Img(width=image.width // 8 * 8, height=image.height // 8 * 8,
                       init_image=await ctx.tasks.store_input(image), strength=strength, more_init_images=more,
                       **{**common, "num_images": common["num_images"] + len(more)})
    if width > config.limits.max_width or height > config.limits.max_height:
        raise req.invalid("outpaint", f"the canvas would be {width}x{height}, over the limit "
                                      f"{config.limits.max_width}x{config.limits.max_height}")
    mask, options = req.mask_image, req.inpaint
    return Inpaint(width=width, height=height, init_image=await ctx.tasks.store_input(image),
                   mask_image=None if mask is None else await ctx.tasks.store_input(mask), strength=strength,
                   mask_blur=options.mask_blur, inpainting_fill=options.fill, inpaint_full_res=options.full_res,
                   inpaint_full_res_padding=options.full_res_padding, invert_mask=options.invert_mask,
                   outpaint=req.outpaint, **common)


def hires_fix(req: GenerationRequest, width: int, height: int, steps: int, config) -> HiresFix | None:
    if req.hires is None:
        return None
    asked, limits = req.hires, config.limits
    hires = HiresFix(scale=asked.scale, upscaler=asked.upscaler, steps=asked.steps or steps,
                     denoising_strength=asked.denoising_strength,
                     width=round(width * asked.scale / 8) * 8, height=round(height * asked.scale / 8) * 8)
    if hires.width > limits.max_width or hires.height > limits.max_height:
        raise req.invalid("hr_scale", f"the upscaled size {hires.width}x{hires.height} is over the limit "
                                      f"{limits.max_width}x{limits.max_height}")
    if int(hires.steps * hires.denoising_strength) < 1:
        raise req.invalid("denoising_strength", "denoising_strength × second-pass steps must give at least one step")
    return hires


def check_upscale(req: UpscaleRequest, config) -> None:
    if req.upscaler not in config.upscaler_names:
        raise req.invalid("upscaler", f"unknown upscaler; one of {config.upscaler_names}")
    _range(req, "scale", req.scale, 1, config.limits.max_upscale_scale)


async def build_upscale(ctx, req: UpscaleRequest) -> Upscale:
    """The JobSpec of an upscale: upscaler known, scale and size within the limits, the image stored."""
    limits = ctx.config.limits
    check_upscale(req, ctx.config)
    size = req.size or (round(req.image.width * req.scale), round(req.image.height * req.scale))
    if max(size) > limits.max_upscale_side:
        raise req.invalid("scale", f"the result would be {size[0]}x{size[1]}, over {limits.max_upscale_side} a side")
    return Upscale(image=await ctx.tasks.store_input(req.image), scale=req.scale, upscaler=req.upscaler,
                   width=size[0], height=size[1], output_format=req.output_format, quality=req.quality)
