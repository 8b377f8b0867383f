"""The model families diffbus serves, for bench/gpu.py: each built from its published architecture
configs with random weights (the compute does not depend on the weights' values), or tiny (a few MB,
the same code paths) for a rehearsal on a CPU. Tokenizers are written locally: nothing is downloaded.

A family's `worker` says whether diffbus's gpu_worker serves it yet: the plain diffusers loop and the
FLOP count run for every family, the diffbus measurements only where `worker` is true."""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from services.gpu_worker.demo_families import t5_tokenizer
from services.gpu_worker.demo_model import write_tokenizer

# CLIP ViT-L/14's text model (SD 1.5's encoder, SDXL's first, SD3's and Flux's CLIP) and OpenCLIP ViT-bigG/14's
# (SDXL's second, SD3's CLIP-G).
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
              max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)
VAE_4CH = dict(in_channels=3, out_channels=3, latent_channels=4, act_fn="silu", layers_per_block=2,
               block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
VAE_16CH = {**VAE_4CH, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5)
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
FLUX_SCHNELL = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                    guidance_embeds=False, axes_dims_rope=(16, 56, 56))

# The tiny stand-ins (tiny_families recipe; SD 1.5's is diffbus's own demo model).
TINY_CLIP = dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                 max_position_embeddings=77, hidden_act="gelu", projection_dim=32)
TINY_T5 = {**T5_XXL, "vocab_size": 200, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4}
TINY_VAE = dict(VAE_4CH, layers_per_block=1, block_out_channels=(32, 32, 64, 64))
TINY_SDXL_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=64)
TINY_SD3 = dict(SD3_MEDIUM, sample_size=32, num_layers=2, attention_head_dim=8, num_attention_heads=4,
                joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=96)
TINY_FLUX = dict(FLUX_SCHNELL, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))


@dataclass(frozen=True)
class Family:
    name: str
    model: str  # what the random weights stand for
    size: int  # native width and height
    steps: int
    guidance: float  # > 1: classifier-free guidance, two denoiser passes (one batch of 2) a step
    t5_tokens: int  # the T5 encoder's sequence (the pipeline's max_sequence_length), 0: no T5
    worker: bool  # diffbus's gpu_worker serves it (else: plain loop and FLOPs only)
    build: Callable  # (tiny: bool, scratch: Path, device: str) -> the pipeline, its networks on `device`
    dtype: str = "float16"  # on CUDA, as the worker loads it (bf16 for the flow-matching families)
    quantizable: bool = False  # the worker's `quantize:` and offload are measured for memory


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_tokenizer(folder / "clip")  # a byte-level vocabulary: any text, no download
    return CLIPTokenizer.from_pretrained(folder / "clip", model_max_length=77)


def _clip(cls, tok, config: dict):
    from transformers import CLIPTextConfig

    return cls(CLIPTextConfig(**config, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)).eval()


def _t5(config: dict):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**config)).eval()


def _vae16(tiny: bool) -> dict:
    return {**TINY_VAE, **{k: VAE_16CH[k] for k in ("latent_channels", "use_quant_conv", "use_post_quant_conv")}} \
        if tiny else VAE_16CH


def build_sd15(tiny: bool, tmp: Path, device: str):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    if tiny:
        from services.gpu_worker import demo_model

        given = os.environ.get("BENCH_DEMO_MODEL")  # the smoke test's, built once
        return StableDiffusionPipeline.from_pretrained(given or demo_model.build(tmp / "demo")).to(device)
    tok = _clip_tokenizer(tmp)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    with torch.device(device):
        nets = dict(unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**VAE_4CH, scaling_factor=0.18215),
                    text_encoder=_clip(CLIPTextModel, tok, CLIP_L))
    return StableDiffusionPipeline(**nets, tokenizer=tok, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def build_sdxl(tiny: bool, tmp: Path, device: str):
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = _clip_tokenizer(tmp)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    with torch.device(device):
        nets = dict(unet=UNet2DConditionModel(**(TINY_SDXL_UNET if tiny else SDXL_UNET)),
                    vae=AutoencoderKL(**(TINY_VAE if tiny else VAE_4CH), scaling_factor=0.13025),
                    text_encoder=_clip(CLIPTextModel, tok, TINY_CLIP if tiny else CLIP_L),
                    text_encoder_2=_clip(CLIPTextModelWithProjection, tok, TINY_CLIP if tiny else CLIP_G))
    return StableDiffusionXLPipeline(**nets, tokenizer=tok, tokenizer_2=tok, scheduler=scheduler)


def build_sd3(tiny: bool, tmp: Path, device: str):
    import torch
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextModelWithProjection

    tok, scheduler = _clip_tokenizer(tmp), FlowMatchEulerDiscreteScheduler(shift=3.0)
    with torch.device(device):
        nets = dict(transformer=SD3Transformer2DModel(**(TINY_SD3 if tiny else SD3_MEDIUM)),
                    vae=AutoencoderKL(**_vae16(tiny), scaling_factor=1.5305, shift_factor=0.0609),
                    text_encoder=_clip(CLIPTextModelWithProjection, tok, TINY_CLIP if tiny else CLIP_L),
                    text_encoder_2=_clip(CLIPTextModelWithProjection, tok, TINY_CLIP if tiny else CLIP_G),
                    text_encoder_3=_t5(TINY_T5 if tiny else T5_XXL))
    return StableDiffusion3Pipeline(**nets, scheduler=scheduler, tokenizer=tok, tokenizer_2=tok,
                                    tokenizer_3=t5_tokenizer())


def build_flux(tiny: bool, tmp: Path, device: str):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tok = _clip_tokenizer(tmp)
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                max_shift=1.15, shift=1.0, use_dynamic_shifting=False)
    with torch.device(device):
        nets = dict(transformer=FluxTransformer2DModel(**(TINY_FLUX if tiny else FLUX_SCHNELL)),
                    vae=AutoencoderKL(**_vae16(tiny), scaling_factor=0.3611, shift_factor=0.1159),
                    text_encoder=_clip(CLIPTextModel, tok, TINY_CLIP if tiny else CLIP_L),
                    text_encoder_2=_t5(TINY_T5 if tiny else T5_XXL))
    return FluxPipeline(**nets, scheduler=scheduler, tokenizer=tok, tokenizer_2=t5_tokenizer())


FAMILIES = {f.name: f for f in (
    Family("sd15", "Stable Diffusion 1.5", 512, 20, 7.5, 0, True, build_sd15),
    Family("sdxl", "Stable Diffusion XL 1.0 base", 1024, 20, 5.0, 0, True, build_sdxl),
    Family("sd3", "Stable Diffusion 3 Medium", 1024, 20, 7.0, 256, True, build_sd3, "bfloat16", True),
    Family("flux", "FLUX.1 [schnell] (timestep-distilled: 4 steps, no guidance)", 1024, 4, 0.0, 512, True,
           build_flux, "bfloat16", True),
)}


def save(family: Family, tiny: bool, path: Path, device: str) -> Path:
    """The family's pipeline, random weights, saved as a diffusers folder (its CUDA dtype unless tiny)."""
    import torch

    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = family.build(tiny, Path(tmp), device)  # random init is much faster on a GPU
    if not tiny:
        pipe.to(getattr(torch, family.dtype))
    pipe.to("cpu").save_pretrained(path)
    return path
