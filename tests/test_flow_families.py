"""SD 3.5 and Flux.1 on tiny random-weight models, in the worker's own generation code and through the
API: what users of these families check (sizes, seeds, img2img size, inpaint, prompt weights, T5
reading past CLIP's 77 tokens, LoRA, single files, previews, samplers, Flux's negative prompt)."""

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.jobs import HiresFix, Img2Img, Inpaint, LoraRef, Txt2Img
from schemas.workers import ModelInfo
from services.config import load
from services.gpu_worker import checkpoint, demo_families, demo_model, families, generate
from services.gpu_worker.generate import GenerationError
from services.gpu_worker.loras import LoraFolder
from services.gpu_worker.pipelines import ModelRegistry
from services.worker.progress import preview

FAMILIES = ("sd3", "flux")
# diffusers' DPM-Solver builds a numpy array from a tensor in a way numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="session")
def flow_files(tmp_path_factory):
    """Each family as a folder, its transformer as one original-layout file, and its LoRAs; Flux's by
    the command users have, the rest in process (quicker)."""
    root = tmp_path_factory.mktemp("flow")
    done = subprocess.run([sys.executable, "-m", "services.cli", "demo-model", str(root / "flux.safetensors"),
                           "--family", "flux", "--single-file"], check=True, capture_output=True, text=True)
    files = {"flux": str(root / "flux"), "flux-single": done.stdout.strip().splitlines()[-1]}
    files["sd3"] = str(demo_model.ensure(root / "sd3", family="sd3"))
    files["sd3-single"] = str(checkpoint.write(root / "sd3", root / "sd3.safetensors"))
    files["schnell"] = str(demo_model.ensure(root / "schnell", family="flux-schnell"))
    for family in FAMILIES:
        demo_families.build_loras(Path(files[family]), root / f"loras-{family}")
        files[f"{family}-loras"] = str(root / f"loras-{family}")
    return files


@pytest.fixture(scope="session")
def registry(flow_files, tmp_path_factory):
    models = [{"name": "schnell", "path": flow_files["schnell"]}]
    for family in FAMILIES:
        models += [{"name": family, "path": flow_files[family]},
                   {"name": f"{family}-single", "checkpoint": flow_files[f"{family}-single"],
                    "config": flow_files[family]}]
    config = load(environ={}, data_dir=str(tmp_path_factory.mktemp("data")),
                  worker={"device": "cpu", "max_loaded_models": 8}, models=models)
    return ModelRegistry(config)


def txt2img(family: str, **fields) -> Txt2Img:
    return Txt2Img(**{"model": family, "prompt": "a cat", "width": 64, "height": 64, "steps": 2,
                      "guidance_scale": 3.5, "seed": 7, **fields})


def draw(registry, spec, init=None, loras=None, folder=None, on_step=lambda *_: False) -> list[np.ndarray]:
    model = registry.pipeline(spec.model)
    with LoraFolder(Path(folder)).applied(model, loras) if loras else contextlib.nullcontext():
        return [np.asarray(image, dtype=int) for image in generate.run(model, spec, init, on_step)]


def differs(a, b) -> int:
    return int(np.abs(a - b).max())


def test_the_family_is_told_from_folders_and_single_files(flow_files):
    for family in FAMILIES:
        assert families.of_folder(Path(flow_files[family])).name == family
        assert families.of_checkpoint(Path(flow_files[f"{family}-single"])).name == family


def test_describe_announces_flow_matching_and_the_variants_defaults(registry):
    described = registry.describe()
    assert (described["flux"].steps, described["flux"].guidance_scale) == (28, 3.5)  # dev
    assert (described["schnell"].steps, described["schnell"].guidance_scale) == (4, 0.0)
    assert described["flux-single"].steps == 28  # the guidance embedder is in the file
    assert described["sd3"].flow_matching and described["flux"].negative_needs_true_cfg
    assert not described["sd3"].negative_needs_true_cfg and (described["sd3"].width, described["sd3"].height) == (1024,
                                                                                                                   1024)


@pytest.mark.parametrize("family", FAMILIES)
def test_sizes_seeds_and_batches(registry, family):
    [a] = draw(registry, txt2img(family, width=64, height=96))
    assert a.shape == (96, 64, 3)
    [again] = draw(registry, txt2img(family, width=64, height=96))
    assert differs(a, again) == 0
    two = draw(registry, txt2img(family, num_images=2))
    assert differs(two[0], two[1]) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_img2img_keeps_the_init_size_and_latent_hires_fix(registry, family):
    """A 64×64 init comes back 64×64 (the pipelines' default is 1024²); `Latent` upscales 16 channels."""
    init = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    spec = Img2Img(model=family, prompt="a cat", width=64, height=64, steps=2, guidance_scale=3.5, seed=1,
                   init_image="k", strength=0.6)
    [out] = draw(registry, spec, init)
    assert out.shape == (64, 64, 3)
    model = registry.pipeline(family)
    hires = HiresFix(scale=1.5, upscaler="Latent", steps=2, denoising_strength=0.6, width=96, height=96)
    latents = generate.run(model, txt2img(family, hires=hires), None, output_type="latent")
    assert latents.shape[1] == 16
    [refined] = generate.refine(model, txt2img(family, hires=hires), generate.upscale_latents(model, latents, hires))
    assert refined.size == (96, 96)


@pytest.mark.parametrize("family", FAMILIES)
def test_inpaint_keeps_the_unmasked_pixels(registry, family):
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    spec = Inpaint(model=family, prompt="a cat", width=64, height=64, steps=2, guidance_scale=3.5, seed=3,
                   init_image="k", mask_image="m", mask_blur=0)
    [out] = generate.inpaint(registry.pipeline(family), spec, init, mask)
    out, before = np.asarray(out, dtype=int), np.asarray(init, dtype=int)
    outside = np.asarray(mask) == 0
    assert differs(out[outside], before[outside]) == 0 and differs(out[~outside], before[~outside]) > 0


def decoded(registry, spec):
    """The decoded image before 8-bit rounding: the tiny random transformers listen to the token
    sequence only faintly (their pooled-text path dominates), so a change there is smaller than a level."""
    return generate.run(registry.pipeline(spec.model), spec, None, output_type="np")


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_change_the_image_and_a_weight_of_one_is_none(registry, family):
    plain = decoded(registry, txt2img(family, prompt="a red cat"))
    weighted = decoded(registry, txt2img(family, prompt="a (red:1.6) cat"))
    one = decoded(registry, txt2img(family, prompt="a (red:1.0) cat"))
    assert np.abs(plain - weighted).max() > 1e-5
    assert np.abs(plain - one).max() == 0  # own encoding of plain text is diffusers' own


@pytest.mark.parametrize("family", FAMILIES)
def test_words_after_clips_77_tokens_still_count(registry, family):
    """T5 reads the whole prompt (Flux's CLIP stops at 77 tokens): an ending past it changes the image."""
    head = "a very long description of a quiet harbour " * 6
    a = decoded(registry, txt2img(family, prompt=head + "under a red sky"))
    b = decoded(registry, txt2img(family, prompt=head + "in grey winter fog"))
    assert np.abs(a - b).max() > 1e-5


@pytest.mark.parametrize("family,names", [("sd3", ["demo-style"]), ("flux", ["demo-style", "demo-kohya"])])
def test_lora_at_weight_zero_is_none_and_at_one_differs(registry, flow_files, family, names):
    """diffusers/peft files, and for Flux kohya files on BFL's block names (as CivitAI ships them)."""
    folder = flow_files[f"{family}-loras"]
    [base] = draw(registry, txt2img(family))
    for name in names:
        [zero] = draw(registry, txt2img(family), loras=[LoraRef(name=name, weight=0.0, sha256="")], folder=folder)
        [full] = draw(registry, txt2img(family), loras=[LoraRef(name=name, weight=1.0, sha256="")], folder=folder)
        assert differs(base, zero) <= 1 and differs(base, full) > 1, name
    [after] = draw(registry, txt2img(family))
    assert differs(base, after) == 0  # unloaded after the job


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_draws_what_the_folder_draws(registry, family):
    [folder] = draw(registry, txt2img(family))
    [single] = draw(registry, txt2img(f"{family}-single"))
    assert differs(folder, single) <= 1


@pytest.mark.parametrize("model", ["sd3", "flux", "schnell"])
def test_previews_during_a_job_map_16_channels(registry, model):
    """Flux packs its latents (B, tokens, 64): the preview unpacks them; SD3's are (B, 16, h, w)."""
    seen = []
    draw(registry, txt2img(model, width=64, height=96),
         on_step=lambda index, total, rgb: seen.append(preview(rgb, "jpeg", 32, (64, 96))) or False)
    assert seen and all((width, height) == (21, 32) for _, width, height in seen)


@pytest.mark.parametrize("family", FAMILIES)
def test_flow_samplers_run_and_noise_prediction_ones_are_refused(registry, family):
    from services.api import samplers

    info = ModelInfo(family=family, width=64, height=64, flow_matching=True)
    for name in ("Euler", "Euler a", "DPM++ 2M", "UniPC", "LCM"):
        chosen = samplers.for_model(samplers.resolve(name, None), info)
        [image] = draw(registry, txt2img(family, scheduler=chosen.scheduler, scheduler_options=chosen.options))
        assert image.shape == (64, 64, 3)
    with pytest.raises(GenerationError, match="not a flow-matching scheduler"):
        draw(registry, txt2img(family, scheduler="EulerDiscreteScheduler"))


def test_flux_schnell_refuses_dpm_solver_with_a_reason(registry):
    with pytest.raises(GenerationError, match="fixed shift"):
        draw(registry, txt2img("schnell", scheduler="DPMSolverMultistepScheduler"))


def test_flux_negative_prompt_needs_true_cfg(registry):
    with pytest.raises(GenerationError, match="true_cfg_scale"):
        draw(registry, txt2img("flux", negative_prompt="blurry"))
    [plain] = draw(registry, txt2img("flux"))
    [true_cfg] = draw(registry, txt2img("flux", negative_prompt="blurry", true_cfg_scale=2.0))
    assert differs(plain, true_cfg) > 0
    [sd3] = draw(registry, txt2img("sd3", negative_prompt="blurry"))  # CFG: SD3 takes one as it is
    assert sd3.shape == (64, 64, 3)


def test_true_cfg_jobs_batch_only_with_their_like():
    """A batch runs true CFG when any job has a negative prompt: it would change a job without one."""
    from schemas.jobs import Job, batch_key

    def key(**fields):
        return batch_key(Job(task_id="t", spec=txt2img("flux", **fields)))

    assert key(true_cfg_scale=2.0, negative_prompt="blurry") == key(true_cfg_scale=2.0, negative_prompt="text")
    assert key(true_cfg_scale=2.0, negative_prompt="blurry") != key(true_cfg_scale=2.0) != key()
    assert key(negative_prompt="a") == key(negative_prompt="b")  # plain CFG (SD3, SDXL) batches as before


def test_fp8_quantize_loads_a_float8_transformer_that_draws(flow_files, tmp_path):
    """fp8 (diffusers' layerwise casting) runs on any device: the CPU covers its path."""
    import torch

    config = load(environ={}, data_dir=str(tmp_path), worker={"device": "cpu"}, models=[
        {"name": "flux-fp8", "checkpoint": flow_files["flux-single"], "config": flow_files["flux"], "quantize": "fp8"}])
    model = ModelRegistry(config).pipeline("flux-fp8")
    assert model.pipe.transformer.x_embedder.weight.dtype == torch.float8_e4m3fn
    [image] = generate.run(model, txt2img("flux-fp8"), None)
    assert image.size == (64, 64)


def test_nf4_without_cuda_and_quantize_on_sd1_are_config_errors_at_start(flow_files, demo_model, tmp_path):
    from services.config import ConfigError

    def registry_of(**model):
        return ModelRegistry(load(environ={}, data_dir=str(tmp_path), worker={"device": "cpu"},
                                  models=[{"name": "m", **model}]))

    with pytest.raises(ConfigError, match="nf4 (runs on CUDA only|needs bitsandbytes)"):
        registry_of(path=flow_files["flux"], quantize="nf4")
    with pytest.raises(ConfigError, match="quantize is for SD3 and Flux models; this one is sd1"):
        registry_of(path=str(demo_model), quantize="int8")


@pytest.fixture(scope="module")
def flux_stack(tmp_path_factory, demo_model, flow_files):
    from .conftest import running
    from .stack import Stack

    with running(Stack(tmp_path_factory.mktemp("flux-stack"), demo_model, models=[
            {"name": "flux", "checkpoint": flow_files["flux-single"], "config": flow_files["flux"]}])) as s:
        yield s


async def test_the_api_maps_samplers_and_refuses_what_flux_cannot_do(flux_stack):
    """A1111's "Euler" on Flux was a 500 (an SD scheduler handed `mu`); now the flow-matching Euler.
    A sampler without a flow-matching meaning and a negative prompt without true CFG are 422s."""
    import base64

    import aiohttp

    from .conftest import decode_image
    from .stack import ALICE

    url = flux_stack.base_url
    body = {"prompt": "a (cat:1.2)", "steps": 2, "width": 64, "height": 64, "seed": 5, "cfg_scale": 3.5}
    async with aiohttp.ClientSession(headers={"X-API-Key": ALICE}) as session:
        async with session.post(f"{url}/sdapi/v1/txt2img", json={**body, "sampler_name": "Euler"}) as resp:
            assert resp.status == 200, await resp.text()
            [image] = (await resp.json())["images"]
        assert decode_image(base64.b64decode(image)).size == (64, 64)
        async with session.post(f"{url}/sdapi/v1/txt2img", json={**body, "sampler_name": "DDIM"}) as resp:
            assert resp.status == 422
            [error] = (await resp.json())["detail"]
        assert error["loc"][-1] == "sampler_name" and "'DDIM'" in error["msg"] and "flux" in error["msg"]
        negative = {"prompt": "a cat", "negative_prompt": "blurry", "num_inference_steps": 2, "width": 64,
                    "height": 64}
        async with session.post(f"{url}/api/v1/generate", json=negative) as resp:
            assert resp.status == 422
            [error] = (await resp.json())["detail"]
        assert error["loc"][-1] == "negative_prompt" and "true_cfg_scale" in error["msg"]
        async with session.post(f"{url}/api/v1/generate", json={**negative, "true_cfg_scale": 2.0}) as resp:
            assert resp.status in (200, 202), await resp.text()
        # FooocusAPI's default styles add negative text of their own: on Flux without true CFG it is left
        # out (a Fooocus client with its defaults can generate); a negative the client typed is refused.
        fooocus = {"prompt": "a cat", "aspect_ratios_selection": "64*64", "overwrite_step": 2,
                   "base_model_name": "flux", "async_process": True}
        async with session.post(f"{url}/v1/engine/generate/", json=fooocus) as resp:
            assert resp.status == 200, await resp.text()
            task = await resp.json()
        async with session.post(f"{url}/v1/engine/generate/", json={**fooocus, "negative_prompt": "blurry"}) as resp:
            assert resp.status == 422
            [error] = (await resp.json())["detail"]
        assert error["loc"][-1] == "negative_prompt"
        for _ in range(600):
            async with session.get(f"{url}/tasks/{task['task_id']}") as resp:
                record = await resp.json()
            if record["task_status"] in ("finished", "failed", "stop"):
                break
            await asyncio.sleep(0.1)
        assert record["task_status"] == "finished", record
        # Forge's Flux fields: distilled_cfg_scale is the distilled guidance, cfg_scale real CFG (1: off).
        forge = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
                 "distilled_cfg_scale": 3.5, "negative_prompt": "blurry"}
        async with session.post(f"{url}/sdapi/v1/txt2img", json={**forge, "cfg_scale": 1}) as resp:
            assert resp.status == 422
            [error] = (await resp.json())["detail"]
        assert error["loc"][-1] == "negative_prompt"
        async with session.post(f"{url}/sdapi/v1/txt2img", json={**forge, "cfg_scale": 4}) as resp:
            assert resp.status == 200, await resp.text()
            info = json.loads((await resp.json())["info"])
        assert info["cfg_scale"] == 3.5 and "True CFG scale: 4" in info["infotexts"][0], info
