"""The GPU speed settings (worker.channels_last, fuse_qkv, attention, vae_decode, compile): each takes
effect when the worker loads a model, and none changes the picture. bench/gpu.py measures their speed."""

import numpy as np
import pytest

from schemas.jobs import Txt2Img
from services.config import ConfigError, load
from services.gpu_worker import generate, speed
from services.gpu_worker.pipelines import ModelRegistry

SPEC = Txt2Img(model="demo", prompt="a red door", width=64, height=64, steps=2, guidance_scale=7, seed=3,
               num_images=2)


def loaded(tmp_path, demo_model, **worker):
    config = load(environ={}, data_dir=str(tmp_path), models=[{"name": "demo", "path": str(demo_model)}],
                  worker={"device": "cpu", **worker})
    return ModelRegistry(config).pipeline("demo")


def pixels(model) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) for image in generate.run(model, SPEC, None)])


@pytest.fixture(scope="module")
def default_pixels(tmp_path_factory, demo_model):
    return pixels(loaded(tmp_path_factory.mktemp("default"), demo_model))


def test_defaults_change_nothing(tmp_path, demo_model):
    pipe = loaded(tmp_path, demo_model).pipe
    assert speed.apply(pipe, load(environ={}).worker) == []
    assert type(pipe.unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn1.processor"]).__name__ \
        == "AttnProcessor2_0"  # diffusers' SDPA


@pytest.mark.parametrize("worker, took_effect", [
    ({"channels_last": True},
     lambda p: p.unet.conv_in.weight.is_contiguous(memory_format=__import__("torch").channels_last)),
    ({"fuse_qkv": True}, lambda p: any(getattr(m, "fused_projections", False) for m in p.unet.modules())),
    ({"attention": "classic"}, lambda p: {type(a).__name__ for a in p.unet.attn_processors.values()} == {"AttnProcessor"}),
    ({"vae_decode": "per_image"}, lambda p: p.vae.use_slicing),
], ids=["channels_last", "fuse_qkv", "classic_attention", "vae_per_image"])
def test_each_setting_takes_effect_and_keeps_the_picture(tmp_path, demo_model, default_pixels, worker, took_effect):
    model = loaded(tmp_path, demo_model, **worker)
    assert took_effect(model.pipe)
    assert np.abs(pixels(model) - default_pixels).max() <= 2  # fp32 reassociation moves a pixel by 1 at most


def test_compile_wraps_the_denoiser(tmp_path, demo_model):
    pipe = loaded(tmp_path, demo_model, compile=True).pipe
    assert pipe.unet._compiled_call_impl is not None  # compiled on its first call (slow on a CPU: not run here)


def test_fused_projections_with_classic_attention_is_refused():
    with pytest.raises(ConfigError, match="fuse_qkv"):
        load(environ={}, worker={"fuse_qkv": True, "attention": "classic"})
