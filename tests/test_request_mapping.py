"""Each dialect's mapping to the neutral request, and the one builder, without a server: a table of
dialect requests -> the JobSpec fields they give, and -> the error (in that dialect's field names)."""

import nats
import pytest

from schemas.jobs import Img2Img, Inpaint, Txt2Img, Upscale
from services.api import a1111, fooocus_request, native, samplers, sdwm
from services.api import request as request_layer
from services.api.context import ApiContext
from services.api.errors import ApiError
from services.api.inputs import decode_image
from services.api.prompts import LoraCatalog
from services.api.tasks import Tasks
from services.api.workers import WorkerDirectory
from services.config import Config, Limits, ModelConfig

from .conftest import png_data_uri

CONFIG = Config(models=[ModelConfig(name="demo", width=64, height=64), ModelConfig(name="big", checkpoint="models/big.safetensors",
                                                                          config="models/sdxl")],
                limits=Limits(max_steps=60, max_images=8))


def image(width: int = 64, height: int = 64):
    return decode_image(png_data_uri(width, height), CONFIG.limits)


def from_native(body: dict):
    req = native.GenerateRequest.model_validate(body, context=CONFIG)
    return native.to_request(req, image() if req.init_image else None, image() if req.mask_image else None)


def from_a1111(body: dict, img2img: bool = False):
    req = a1111.A1111Request.model_validate(body)
    chosen = samplers.resolve(req.sampler_name, req.scheduler)
    return a1111.to_request(req, {}, image(req.width, req.height) if img2img else None, None, chosen, CONFIG)


def from_fooocus(body: dict):
    req = fooocus_request.GenerateRequest.model_validate(body)
    images = {f: image() for f in fooocus_request.IMAGE_FIELDS if getattr(req, f)}
    return fooocus_request.to_request(req, images, CONFIG, lambda model: (1024, 1024))


def from_sdwm(body: dict):
    args = {"prompts": "x", "negativePrompts": "", "steps": 5, "scale": 3, "width": 64, "height": 64, "count": 1,
            **body}
    images = [image() for _ in args.get("initialImages", [])]
    return sdwm.to_request(args, (args.get("module"), []), images)


@pytest.fixture
def ctx():
    workers = WorkerDirectory(None, stale_after_s=30)
    return ApiContext(config=CONFIG, keyring=None, tasks=Tasks(CONFIG, nats.NATS()), workers=workers,
                      loras=LoraCatalog(workers))


async def build(ctx, neutral):
    if isinstance(neutral, request_layer.UpscaleRequest):
        return await request_layer.build_upscale(ctx, neutral)
    return await request_layer.build(ctx, neutral)


DPM_KARRAS = {"scheduler": "DPMSolverMultistepScheduler", "scheduler_options": {"use_karras_sigmas": True}}


@pytest.mark.parametrize("mapped, kind, fields", [
    (lambda: from_native({"prompt": "a cat", "num_inference_steps": 7, "guidance_scale": 3, "width": 64,
                          "height": 128, "seed": 5}),
     Txt2Img, {"prompt": "a cat", "steps": 7, "guidance_scale": 3, "width": 64, "height": 128, "seed": 5}),
    (lambda: from_native({"prompt": "x", "init_image": "given", "mask_image": "given", "strength": 0.5}),
     Inpaint, {"strength": 0.5, "width": 64, "height": 64}),
    (lambda: from_native({"prompt": "x", "enable_hr": True, "hr_scale": 2, "width": 64, "height": 64}),
     Txt2Img, {"width": 64}),
    (lambda: from_a1111({"prompt": "x", "steps": 9, "cfg_scale": 4, "batch_size": 2, "n_iter": 2, "width": 64,
                         "height": 96, "seed": 11, "sampler_name": "DPM++ 2M", "scheduler": "karras"}),
     Txt2Img, {"steps": 9, "guidance_scale": 4, "num_images": 4, "width": 64, "height": 96, "seed": 11,
               **DPM_KARRAS}),
    (lambda: from_a1111({"prompt": "x", "width": 64, "height": 64, "sampler_name": "DPM++ 2M Karras",
                         "override_settings": {"sd_model_checkpoint": "big [0123456789]"}}),
     Txt2Img, {"model": "big", "steps": 50, **DPM_KARRAS}),
    (lambda: from_a1111({"prompt": "x", "width": 64, "height": 64, "denoising_strength": 0.4}, img2img=True),
     Img2Img, {"strength": 0.4, "width": 64}),
    (lambda: from_fooocus({"prompt": "x", "performance_selection": "Lightning", "image_number": 2, "image_seed": 3,
                           "aspect_ratios_selection": "64*128", "disable_seed_increment": True}),
     Txt2Img, {"steps": 4, "num_images": 2, "seed": 3, "width": 64, "height": 128, "seed_increment": False,
               "metadata": None}),
    (lambda: from_fooocus({"prompt": "x", "base_model_name": "big.safetensors"}),
     Txt2Img, {"model": "big", "width": 1152, "height": 896, "steps": 30}),
    (lambda: from_fooocus({"prompt": "x", "uov_method": "Vary (Subtle)", "uov_input_image": "given"}),
     Img2Img, {"strength": 0.5}),
    (lambda: from_fooocus({"uov_method": "Upscale (2x)", "uov_input_image": "given"}),
     Upscale, {"scale": 2.0, "width": 128, "upscaler": "Lanczos"}),
    (lambda: from_sdwm({"count": 2, "seed": 9}), Txt2Img, {"num_images": 2, "steps": 5, "guidance_scale": 3,
                                                          "seed": 9}),
    (lambda: from_sdwm({"initialImages": ["a", "b"], "denoise": 0.6, "resizeMode": 0}),
     Img2Img, {"num_images": 2, "strength": 0.6}),
])
async def test_a_dialect_request_gives_these_jobspec_fields(ctx, mapped, kind, fields):
    spec = await build(ctx, mapped())
    assert isinstance(spec, kind)
    assert {name: getattr(spec, name) for name in fields} == fields


@pytest.mark.parametrize("mapped, loc", [
    (lambda: from_native({"prompt": "x", "num_inference_steps": 61}), ["num_inference_steps"]),
    (lambda: from_native({"prompt": "x", "width": 100}), ["width"]),
    (lambda: from_native({"prompt": "x", "model": "nope"}), ["model"]),
    (lambda: from_native({"prompt": "x", "enable_hr": True, "hr_upscaler": "nope"}), ["hr_upscaler"]),
    (lambda: from_native({"prompt": "x", "init_image": "given", "enable_hr": True}), ["enable_hr"]),
    (lambda: from_a1111({"prompt": "x", "steps": 61}), ["steps"]),
    (lambda: from_a1111({"prompt": "x", "cfg_scale": 1000}), ["cfg_scale"]),
    (lambda: from_a1111({"prompt": "x", "batch_size": 9}), ["batch_size"]),
    (lambda: from_a1111({"prompt": "x", "width": 100}), ["width"]),
    (lambda: from_a1111({"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}}),
     ["sd_model_checkpoint"]),
    (lambda: from_a1111({"prompt": "x", "enable_hr": True, "hr_upscaler": "nope"}), ["hr_upscaler"]),
    (lambda: from_a1111({"prompt": "x", "styles": ["nope"]}), ["styles"]),
    (lambda: from_fooocus({"prompt": "x", "overwrite_step": 61}), ["overwrite_step"]),
    (lambda: from_fooocus({"prompt": "x", "image_number": 9}), ["image_number"]),
    (lambda: from_fooocus({"prompt": "x", "guidance_scale": 99}), ["guidance_scale"]),
    (lambda: from_fooocus({"prompt": "x", "base_model_name": "nope"}), ["base_model_name"]),
    (lambda: from_fooocus({"prompt": "x", "aspect_ratios_selection": "100*64"}), ["aspect_ratios_selection"]),
    (lambda: from_fooocus({"prompt": "x", "sharpness": 3}), ["sharpness"]),
    (lambda: from_fooocus({"prompt": "x", "uov_method": "Vary (Subtle)", "uov_input_image": "given",
                           "overwrite_vary_strength": 0.01, "overwrite_step": 8}), ["overwrite_vary_strength"]),
    (lambda: from_fooocus({"uov_method": "Upscale (Custom)", "uov_input_image": "given", "upscale_multiple": 9}),
     ["upscale_multiple"]),
    (lambda: from_sdwm({"steps": 61}), ["steps"]),
    (lambda: from_sdwm({"count": 9}), ["count"]),
    (lambda: from_sdwm({"scale": 99}), ["scale"]),
    (lambda: from_sdwm({"width": 100}), ["width"]),
    (lambda: from_sdwm({"initialImages": ["a"], "denoise": 2, "resizeMode": 0}), ["denoise"]),
])
async def test_an_invalid_field_is_named_as_the_dialect_names_it(ctx, mapped, loc):
    with pytest.raises(ApiError) as e:
        await build(ctx, mapped())
    assert e.value.status == 422 and e.value.detail[0]["loc"] == ["body", *loc], e.value.detail


def test_forge_distilled_cfg_scale_is_flux_guidance_and_ignored_elsewhere():
    from schemas.workers import ModelInfo

    req = request_layer.GenerationRequest(prompt="x", guidance_scale=4.0, distilled_guidance=3.5)
    flux = ModelInfo(family="flux", width=64, height=64, flow_matching=True, negative_needs_true_cfg=True)
    sd1 = ModelInfo(family="sd1", width=64, height=64)
    on_flux = request_layer._forge_guidance(req, flux)
    assert (on_flux.guidance_scale, on_flux.true_cfg_scale) == (3.5, 4.0)
    off = request_layer._forge_guidance(request_layer.GenerationRequest(prompt="x", guidance_scale=1.0,
                                                                        distilled_guidance=3.5), flux)
    assert (off.guidance_scale, off.true_cfg_scale) == (3.5, None)  # Forge's cfg_scale 1: no real CFG
    assert request_layer._forge_guidance(req, sd1) is req  # SD 1.x: cfg_scale is CFG, as in Forge
