"""SDXL end to end on a tiny random-weight SDXL model (both CLIP encoders, size conditioning), in the
worker's own generation code: what A1111 and Fooocus users check on their SDXL checkpoints."""

import base64
import contextlib
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.jobs import HiresFix, Img2Img, Inpaint, LoraRef, Outpaint, Txt2Img
from services.config import load
from services.gpu_worker import families, generate
from services.gpu_worker.loras import LoraFolder
from services.gpu_worker.pipelines import ModelRegistry

STEPS = 3
# diffusers' Euler scheduler builds a numpy array from a tensor in a way numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def demo(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "services.cli", *args], check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def sdxl_files(tmp_path_factory):
    """The tiny SDXL as a folder, as one original-layout checkpoint, as a 9-channel inpainting model,
    and its LoRAs: built once per session by the commands users have."""
    root = tmp_path_factory.mktemp("sdxl")
    files = {"folder": demo("demo-model", str(root / "sdxl"), "--family", "sdxl"),
             "checkpoint": demo("demo-model", str(root / "sdxl-single.safetensors"), "--family", "sdxl", "--single-file"),
             "inpainting": demo("demo-model", str(root / "sdxl-inpaint"), "--family", "sdxl", "--inpainting")}
    demo("demo-loras", files["folder"], str(root / "loras"))
    files["loras"] = str(root / "loras")
    files["vae"] = str(root / "sdxl-vae.safetensors")
    write_vae_file(Path(files["folder"]) / "vae", files["vae"])
    return files


def write_vae_file(folder: Path, out: str) -> None:
    """The model's VAE alone in the original layout, as VAE files are shared (no prefix)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from services.gpu_worker.checkpoint import vae_keys

    vae = AutoencoderKL.from_pretrained(folder)
    state = vae_keys(vae.state_dict(), vae.config)
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in state.items()}, out)


@pytest.fixture(scope="session")
def registry(sdxl_files, tmp_path_factory):
    config = load(environ={}, data_dir=str(tmp_path_factory.mktemp("data")),
                  worker={"device": "cpu", "max_loaded_models": 4}, models=[
        {"name": "xl", "path": sdxl_files["folder"]},
        {"name": "xl-single", "checkpoint": sdxl_files["checkpoint"], "config": sdxl_files["checkpoint"][:-12]},
        {"name": "xl-inpaint", "path": sdxl_files["inpainting"]},
        {"name": "xl-vae", "path": sdxl_files["folder"], "vae": sdxl_files["vae"]}])
    return ModelRegistry(config)


def txt2img(**fields) -> Txt2Img:
    return Txt2Img(**{"model": "xl", "prompt": "a cat", "width": 64, "height": 64, "steps": STEPS,
                      "guidance_scale": 5.0, "seed": 7, **fields})


def draw(registry, spec, init=None, loras=None, folder=None) -> list[np.ndarray]:
    model = registry.pipeline(spec.model)
    with LoraFolder(Path(folder)).applied(model, loras) if loras else contextlib.nullcontext():
        return [np.asarray(image, dtype=int) for image in generate.run(model, spec, init)]


def differs(a, b) -> int:
    return int(np.abs(a - b).max())


def test_the_family_is_told_from_each_form_of_the_files(sdxl_files):
    assert families.of_folder(Path(sdxl_files["folder"])).name == "sdxl"
    assert families.of_folder(Path(sdxl_files["inpainting"])).name == "sdxl"
    assert families.of_checkpoint(Path(sdxl_files["checkpoint"])).name == "sdxl"
    assert families.detect(Path(sdxl_files["folder"]), None, "sd1").name == "sd1"  # `family:` in config wins


def test_sizes_seeds_and_batches(registry):
    [a] = draw(registry, txt2img(width=64, height=96))
    assert a.shape == (96, 64, 3)
    [again] = draw(registry, txt2img(width=64, height=96))
    assert differs(a, again) == 0
    two = draw(registry, txt2img(num_images=2))
    assert differs(two[0], two[1]) > 0  # seed, seed + 1
    [second] = draw(registry, txt2img(seed=8))
    assert differs(two[1], second) <= 1  # one image of a batch can be made alone (batched maths may round apart)


def test_a1111_weights_on_sdxl(registry):
    [plain] = draw(registry, txt2img(prompt="a cat"))
    [weighted] = draw(registry, txt2img(prompt="a (cat:1.6)"))
    [one] = draw(registry, txt2img(prompt="a (cat:1.0)"))
    assert differs(plain, weighted) > 1
    assert differs(plain, one) <= 1  # own encoding of a plain chunk is diffusers' own


def test_the_last_chunk_of_a_long_prompt_and_negative_counts(registry):
    head = "a very long description of a quiet harbour " * 6  # past 75 tokens
    [a] = draw(registry, txt2img(prompt=head + "under a red sky"))
    [b] = draw(registry, txt2img(prompt=head + "in grey winter fog"))
    assert differs(a, b) > 0
    negative = "blurry, lowres, bad anatomy, " * 12
    [c] = draw(registry, txt2img(negative_prompt=negative + "text"))
    [d] = draw(registry, txt2img(negative_prompt=negative + "watermark"))
    assert differs(c, d) > 0


def test_single_file_draws_what_the_folder_draws(registry):
    [folder] = draw(registry, txt2img())
    [single] = draw(registry, txt2img(model="xl-single"))
    assert differs(folder, single) <= 1


@pytest.fixture(scope="session")
def clip_vocab_sdxl(tmp_path_factory):
    """The tiny SDXL built with OpenAI CLIP's real tokenizer (49408 tokens, made from clip-anytorch's BPE
    merges) as a folder and a single file, and a worker.model_configs root holding only its JSON configs
    (no vocab.json, merges.txt or tokenizer.json): what diffbus ships for SDXL base, in miniature."""
    from services.gpu_worker import checkpoint, demo_families, model_configs

    root = tmp_path_factory.mktemp("sdxl-clip")
    model_configs.write_clip_tokenizer(root / "clip")
    demo_families.build("sdxl", root / "clip").save_pretrained(root / "folder")
    checkpoint.write(root / "folder", root / "single.safetensors")
    for path in (root / "folder").rglob("*.json"):
        if path.name not in ("vocab.json", "tokenizer.json"):
            target = root / "configs" / "sdxl" / path.relative_to(root / "folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return root


def test_a_single_file_without_config_loads_with_configs_diffbus_provides(clip_vocab_sdxl, tmp_path):
    root = clip_vocab_sdxl
    config = load(environ={}, data_dir=str(tmp_path), worker={"device": "cpu", "model_configs": str(root / "configs")},
                  models=[{"name": "folder", "path": str(root / "folder")},
                          {"name": "single", "checkpoint": str(root / "single.safetensors")}])
    registry = ModelRegistry(config)
    pipe = registry.pipeline("single").pipe
    assert not list((root / "configs").rglob("vocab.json"))  # the vocabulary came from CLIP's merges
    # OpenAI CLIP's ids, and SDXL's second tokenizer pads with "!" (id 0)
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert pipe.tokenizer_2("a cat", padding="max_length", max_length=5).input_ids == [49406, 320, 2368, 49407, 0]
    [folder] = draw(registry, txt2img(model="folder", prompt="a (photo:1.2) of a cat"))
    [single] = draw(registry, txt2img(model="single", prompt="a (photo:1.2) of a cat"))
    assert differs(folder, single) <= 1


def test_the_shipped_configs_are_sd15s_and_sdxl_bases(tmp_path):
    """Built on the meta device (no memory), each network has the published parameter count."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from services.gpu_worker import model_configs

    def count(model) -> int:
        return sum(p.numel() for p in model.parameters())

    expected = {"sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                         "text_encoder_2": 694_659_840},
                "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}}
    for family, parts in expected.items():
        folder = model_configs.folder(family, tmp_path)
        with torch.device("meta"):
            built = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                     "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                     "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))}
            if family == "sdxl":
                built["text_encoder_2"] = CLIPTextModelWithProjection(
                    CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
        assert {name: count(model) for name, model in built.items()} == parts
    with pytest.raises(families.FamilyError, match="set `config:`"):
        model_configs.folder("no-such-family", tmp_path)


def test_a_vae_named_in_config_replaces_the_models_own(registry):
    [own] = draw(registry, txt2img())
    [named] = draw(registry, txt2img(model="xl-vae"))
    assert differs(own, named) <= 1  # the same weights, read from a single VAE file


@pytest.mark.filterwarnings("ignore:`upcast_vae` is deprecated:FutureWarning")  # diffusers' own upcast branch calls it
def test_float16_decodes_the_sdxl_vae_in_float32_unless_the_named_vae_is_fp16_safe(registry, sdxl_files, tmp_path):
    """CUDA's fp16 path, run on the CPU (worker.dtype: float16): SDXL's VAE (force_upcast in its config)
    decodes in float32 and goes back to float16; a VAE named in config whose config says it is fp16-safe
    (as madebyollin's sdxl-vae-fp16-fix) decodes in float16. Only a GPU with real weights shows the
    black images this prevents: random tiny weights never overflow."""
    import json
    import shutil

    safe = tmp_path / "vae-fp16-safe"
    shutil.copytree(Path(sdxl_files["folder"]) / "vae", safe)
    config = json.loads((safe / "config.json").read_text())
    (safe / "config.json").write_text(json.dumps({**config, "force_upcast": False}))
    models = [{"name": "xl", "path": sdxl_files["folder"]},
              {"name": "xl-safe", "path": sdxl_files["folder"], "vae": str(safe)}]
    half = ModelRegistry(load(environ={}, data_dir=str(tmp_path), worker={"device": "cpu", "dtype": "float16"},
                              models=models))
    [full] = draw(registry, txt2img(prompt="a (cat:1.3)"))
    for name, decoded_in in (("xl", "torch.float32"), ("xl-safe", "torch.float16")):
        model, seen = half.pipeline(name), []
        hook = model.pipe.vae.decoder.register_forward_pre_hook(lambda _, args: seen.append(str(args[0].dtype)))
        try:
            [image] = draw(half, txt2img(model=name, prompt="a (cat:1.3)"))
        finally:
            hook.remove()
        assert str(model.pipe.unet.dtype) == str(model.pipe.vae.dtype) == "torch.float16"
        assert seen == [decoded_in]
        assert differs(full, image) <= 2  # what float32 draws
    init = Image.fromarray(full.astype(np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    spec = Inpaint(model="xl", prompt="a dog", width=64, height=64, steps=STEPS, guidance_scale=5.0, seed=3,
                   init_image="k", mask_image="m", mask_blur=0)
    [painted] = generate.inpaint(half.pipeline("xl"), spec, init, mask)
    outside = np.asarray(mask) == 0
    assert differs(np.asarray(painted, dtype=int)[outside], full[outside]) == 0


@pytest.mark.parametrize("name", ["demo-style", "demo-kohya"])
def test_lora_at_weight_zero_is_none_and_at_one_differs(registry, sdxl_files, name):
    [base] = draw(registry, txt2img())
    [zero] = draw(registry, txt2img(), loras=[LoraRef(name=name, weight=0.0, sha256="")], folder=sdxl_files["loras"])
    [full] = draw(registry, txt2img(), loras=[LoraRef(name=name, weight=1.0, sha256="")], folder=sdxl_files["loras"])
    [after] = draw(registry, txt2img())
    assert differs(base, zero) <= 1
    assert differs(base, full) > 1
    assert differs(base, after) == 0  # unloaded after the job


def test_img2img_hires_fix_and_latent_upscale(registry):
    [first] = draw(registry, txt2img())
    spec = Img2Img(**{f: getattr(txt2img(), f) for f in ("model", "prompt", "width", "height", "steps",
                                                          "guidance_scale", "seed")}, init_image="k", strength=0.6)
    [changed] = draw(registry, spec, Image.fromarray(first.astype(np.uint8)))
    assert changed.shape == first.shape and differs(first, changed) > 0
    model = registry.pipeline("xl")
    hires = HiresFix(scale=1.5, upscaler="Latent", steps=2, denoising_strength=0.6, width=96, height=96)
    spec = txt2img(hires=hires)
    latents = generate.run(model, spec, None, output_type="latent")
    [refined] = generate.refine(model, spec, generate.upscale_latents(model, latents, hires))
    assert refined.size == (96, 96)
    [pixels] = generate.refine(model, spec, [Image.fromarray(first.astype(np.uint8)).resize((96, 96))])
    assert pixels.size == (96, 96)


@pytest.mark.parametrize("model", ["xl", "xl-inpaint"])
def test_inpaint_and_outpaint_keep_the_unmasked_pixels(registry, model):
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    common = dict(model=model, prompt="a cat", width=64, height=64, steps=STEPS, guidance_scale=5.0, seed=3,
                  init_image="k", mask_blur=0)
    [out] = generate.inpaint(registry.pipeline(model), Inpaint(**common, mask_image="m"), init, mask)
    out, before = np.asarray(out, dtype=int), np.asarray(init, dtype=int)
    outside = np.asarray(mask) == 0
    assert differs(out[outside], before[outside]) == 0 and differs(out[~outside], before[~outside]) > 0
    spec = Inpaint(**{**common, "width": 96}, outpaint=Outpaint(left=16, right=16))
    [wide] = generate.inpaint(registry.pipeline(model), spec, init, None)
    assert wide.size == (96, 64)
    assert differs(np.asarray(wide, dtype=int)[:, 16:80], before) == 0


def test_previews_use_the_sdxl_latent_colours(registry):
    seen = []
    draw_model = registry.pipeline("xl")
    generate.run(draw_model, txt2img(), None, lambda index, total, rgb: seen.append(rgb.shape) or False)
    assert seen and all(shape == (1, 3, 8, 8) for shape in seen)


def test_every_a1111_sampler_runs_on_sdxl(registry):
    from services.api import samplers

    for name in ("Euler a", "DPM++ 2M Karras", "DDIM", "UniPC", "Heun"):
        chosen = samplers.resolve(name, None)
        [image] = draw(registry, txt2img(scheduler=chosen.scheduler, scheduler_options=chosen.options, steps=2))
        assert image.shape == (64, 64, 3)


def test_fooocus_default_aspect_is_1152x896_at_sdxl_native_size():
    from services.api.fooocus_request import default_aspect

    assert default_aspect((1024, 1024)) == (1152, 896)
    assert default_aspect((512, 512)) == (576, 448)


@pytest.fixture(scope="module")
def sdxl_stack(tmp_path_factory, demo_model, sdxl_files, upscaler_models):
    from .conftest import wait_ready
    from .stack import Stack

    s = Stack(tmp_path_factory.mktemp("sdxl-stack"), demo_model, upscaler_models, models=[
        {"name": "demo", "path": str(demo_model), "width": 64, "height": 64},
        {"name": "xl", "checkpoint": sdxl_files["checkpoint"], "config": sdxl_files["checkpoint"][:-12]}]).start_all()
    try:
        wait_ready(s)
        yield s
    finally:
        s.close()


async def test_listings_show_family_native_size_and_the_checkpoint_hash(sdxl_stack, sdxl_files):
    import aiohttp

    from .conftest import decode_image
    from .stack import ALICE

    sha256 = hashlib.sha256(Path(sdxl_files["checkpoint"]).read_bytes()).hexdigest()
    async with aiohttp.ClientSession(headers={"X-API-Key": ALICE}) as session:
        async with session.get(f"{sdxl_stack.base_url}/api/v1/models") as resp:
            models = {m["name"]: m for m in (await resp.json())["models"]}
        assert models["xl"]["family"] == "sdxl" and (models["xl"]["width"], models["xl"]["height"]) == (1024, 1024)
        assert models["xl"]["sha256"] == sha256 and models["demo"]["family"] == "sd1"
        async with session.get(f"{sdxl_stack.base_url}/sdapi/v1/sd-models") as resp:
            [xl] = [m for m in await resp.json() if m["model_name"] == "xl"]
        assert (xl["hash"], xl["sha256"], xl["title"]) == (sha256[:10], sha256, f"xl [{sha256[:10]}]")
        assert (xl["family"], xl["width"], xl["height"]) == ("sdxl", 1024, 1024)
        async with session.get(f"{sdxl_stack.base_url}/v1/engines/all-models") as resp:
            fooocus = await resp.json()
        assert fooocus["model_filenames"] == ["demo", "xl"]  # FooocusAPI's shape, details beside it
        assert fooocus["models"] == [{"name": "demo", "family": "sd1", "width": 64, "height": 64},
                                     {"name": "xl", "family": "sdxl", "width": 1024, "height": 1024}]
        body = {"prompt": "a (cat:1.2)", "steps": 2, "width": 64, "height": 64, "seed": 5,
                "override_settings": {"sd_model_checkpoint": xl["title"]}}
        async with session.post(f"{sdxl_stack.base_url}/sdapi/v1/txt2img", json=body) as resp:
            assert resp.status == 200, await resp.text()
            [image] = (await resp.json())["images"]
    parameters = decode_image(base64.b64decode(image)).info["parameters"]
    assert f"Model hash: {sha256[:10]}, Model: xl" in parameters


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos", "R-ESRGAN 4x+", "ESRGAN_4x"])
async def test_hires_fix_on_sdxl_with_each_upscaler(sdxl_stack, upscaler):
    """A1111's hires fix on the SDXL checkpoint: a model upscaler's pass runs in the upscaler service,
    the second pass back on the SDXL pipeline; the PNG says which upscaler made it."""
    import aiohttp

    from .conftest import decode_image
    from .stack import ALICE

    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5, "enable_hr": True, "hr_scale": 1.5,
            "hr_upscaler": upscaler, "hr_second_pass_steps": 2, "denoising_strength": 0.5,
            "override_settings": {"sd_model_checkpoint": "xl"}}
    async with aiohttp.ClientSession(headers={"X-API-Key": ALICE}) as session:
        async with session.post(f"{sdxl_stack.base_url}/sdapi/v1/txt2img", json=body) as resp:
            assert resp.status == 200, await resp.text()
            [image] = (await resp.json())["images"]
    png = decode_image(base64.b64decode(image))
    assert png.size == (96, 96)
    assert f"Hires upscaler: {upscaler}" in png.info["parameters"] and "Model: xl" in png.info["parameters"]
