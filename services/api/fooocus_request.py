"""FooocusAPI's generate request (its CommonRequest, advanced parameters at the top level) and its pure
mapping to the neutral request (services/api/request.py).

Fooocus has many knobs diffbus has no machinery for (FreeU, refiners, ControlNet, SDXL ADM scaling...).
Such a field at its Fooocus default changes nothing and is accepted, so clients that send the whole
parameter set work; any other value is a 422 naming it, never silently dropped."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.jobs import Outpaint
from services.storage import FileUrl

from . import request as request_layer
from . import samplers
from . import styles as prompt_styles
from .errors import ApiError, invalid
from .inputs import InputImage
from .request import GenerationRequest, InpaintOptions, UpscaleRequest

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
    "generate_image_grid": False, "black_out_nsfw": False, "enhance_checkbox": False,
}
IMAGE_FIELDS = ("uov_input_image", "inpaint_input_image", "inpaint_mask_image_upload")
NO_IMAGE = ("", "None", "none", "null", "string")  # FooocusAPI reads these as no image (its defaults are "None")
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
    image_seed: int = Field(-1, ge=-1, lt=request_layer.SEED_RANGE)
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
    enhance_checkbox: bool = False  # FooocusAPI 2.5's enhance (enhance_input_image, enhance_ctrls...)
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


def styled(prompt: str, negative: str, names: list[str], config) -> tuple[str, str]:
    """Fooocus's template styles: each puts the prompt at `{prompt}` and adds its negative prompt."""
    known = prompt_styles.load(config)
    unknown = prompt_styles.unknown(names, config)
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
    return request_layer.configured_model(name, config) or name  # unknown: the builder names the choices


def default_aspect(native: tuple[int, int]) -> tuple[int, int]:
    """Fooocus's default aspect ratio, 1152*896, at the model's native pixel count in multiples of
    64: 1152×896 itself for SDXL's 1024×1024."""
    scale = (native[0] * native[1] / (1152 * 896)) ** 0.5
    return max(64, round(1152 * scale / 64) * 64), max(64, round(896 * scale / 64) * 64)


# The Fooocus name of each neutral request field (for errors); init_image and strength depend on the mode.
NAMES = {"num_images": ["image_number"], "steps": ["overwrite_step"], "seed": ["image_seed"],
         "model": ["base_model_name"], "mask_image": ["inpaint_mask_image_upload"],
         "width": ["aspect_ratios_selection"], "height": ["aspect_ratios_selection"], "scheduler": ["sampler_name"],
         "outpaint": ["outpaint_distance"]}


def _check_modes(req: GenerateRequest) -> None:
    vary = req.uov_method in VARY_STRENGTH
    if req.uov_method != "Disabled" and not vary and req.uov_method not in UPSCALE:
        raise invalid(["uov_method"], f"one of {['Disabled', *VARY_STRENGTH, *UPSCALE]}")
    if req.uov_method != "Disabled" and not req.uov_input_image:
        raise invalid(["uov_input_image"], f"uov_method {req.uov_method!r} needs uov_input_image")
    if req.uov_method != "Disabled" and (req.inpaint_input_image is not None or req.outpaint_selections):
        raise invalid(["uov_method"], "vary/upscale and inpaint/outpaint cannot be combined in one request")
    if req.outpaint_selections and req.inpaint_input_image is None:
        raise invalid(["inpaint_input_image"], "outpaint_selections need inpaint_input_image")
    if req.inpaint_input_image is not None and req.inpaint_mask_image_upload is None and not req.outpaint_selections:
        raise invalid(["inpaint_mask_image_upload"], "inpainting needs a mask (white = repaint)")


def _scheduler(req: GenerateRequest) -> samplers.Resolution:
    if req.scheduler_name and req.scheduler_name not in SCHEDULES:
        raise invalid(["scheduler_name"], f"{req.scheduler_name!r} is not a supported Fooocus scheduler; "
                                          f"one of {sorted(SCHEDULES)}")
    try:
        return samplers.resolve(SAMPLERS.get(req.sampler_name, req.sampler_name),
                                SCHEDULES.get(req.scheduler_name, req.scheduler_name))
    except ApiError:
        raise invalid(["sampler_name"], f"{req.sampler_name!r} is not a supported Fooocus sampler; "
                                        f"one of {sorted(SAMPLERS)}") from None


def _outpaint(req: GenerateRequest, image: InputImage) -> Outpaint | None:
    """Outpaint margins in pixels (multiples of 8): the given distance, else 30 % of the side."""
    if not req.outpaint_selections:
        return None
    margins = {}
    for side, distance in zip(("Left", "Top", "Right", "Bottom"), req.outpaint_distance):
        if side in req.outpaint_selections:
            across = image.width if side in ("Left", "Right") else image.height
            margins[side.lower()] = (distance or int(across * OUTPAINT_SHARE)) // 8 * 8
    return Outpaint(**margins)


def to_request(req: GenerateRequest, images: dict[str, InputImage], config,
               native_size: Callable) -> GenerationRequest | UpscaleRequest:
    """The neutral request of a FooocusAPI request (its images decoded; `native_size(model config)`: the
    size a model makes when asked for none)."""
    _unsupported(req)
    _check_modes(req)
    if req.uov_method in UPSCALE:
        return UpscaleRequest(image=images["uov_input_image"], scale=UPSCALE[req.uov_method] or req.upscale_multiple,
                              upscaler=request_layer.default_upscaler(config),
                              output_format=request_layer.output_format(req.output_format),
                              names={"image": ["uov_input_image"], "scale": ["upscale_multiple"],
                                     "upscaler": ["uov_method"]})
    prompt, style_negative = styled(req.prompt, "", config.fooocus.default_styles
                                    if req.style_selections is None else req.style_selections, config)
    chosen = _scheduler(req)
    out = GenerationRequest(
        prompt=prompt.strip() or " ", negative_prompt=req.negative_prompt, style_negative=style_negative,
        model=_model_name(req.base_model_name, config),
        num_images=req.image_number, seed=req.image_seed, guidance_scale=req.guidance_scale,
        steps=req.overwrite_step if req.overwrite_step > 0 else PERFORMANCE_STEPS[req.performance_selection],
        output_format=request_layer.output_format(req.output_format), scheduler=chosen.scheduler,
        scheduler_options=chosen.options, sampler=chosen, seed_increment=not req.disable_seed_increment,
        metadata=req.metadata_scheme if req.save_metadata_to_images else None,
        loras=[(Path(lo.model_name).stem, lo.weight) for lo in req.loras if lo.enabled and lo.model_name != "None"],
        names=NAMES)
    if req.uov_method in VARY_STRENGTH:
        out.init_image = images["uov_input_image"]
        out.strength = req.overwrite_vary_strength if req.overwrite_vary_strength > 0 else VARY_STRENGTH[req.uov_method]
        out.names = {**NAMES, "init_image": ["uov_input_image"], "strength": ["overwrite_vary_strength"]}
    elif req.inpaint_input_image is not None:
        if req.inpaint_additional_prompt:
            out.prompt = f"{req.inpaint_additional_prompt}, {out.prompt}".strip(", ")
        out.init_image, out.mask_image = images["inpaint_input_image"], images.get("inpaint_mask_image_upload")
        out.strength, out.outpaint = req.inpaint_strength, _outpaint(req, out.init_image)
        out.inpaint = InpaintOptions(invert_mask=req.invert_mask_checkbox)
        out.names = {**NAMES, "init_image": ["inpaint_input_image"], "strength": ["inpaint_strength"]}
    else:
        out.width, out.height = _size(req)
        model = config.model(out.model or config.default_model)
        if out.width is None and out.height is None and model is not None and model.width is model.height is None:
            out.width, out.height = default_aspect(native_size(model))
    return out


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

