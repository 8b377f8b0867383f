"""The `demo` model: a tiny Stable Diffusion 1.x pipeline with random weights, built from configs with
a small self-written CLIP vocabulary, saved as an ordinary diffusers folder and then loaded like any
real model. It draws noise-like pictures fast on a CPU: for trying the service and for tests."""

import json
import os
import shutil
import tempfile
from pathlib import Path

from .model_configs import bytes_to_unicode

# 0.5 KB of vocabulary instead of CLIP's 49k tokens: every byte alone and with the end-of-word mark,
# no merges, so any text tokenizes without <unk>.
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]


def write_tokenizer(folder: Path) -> None:
    chars = list(bytes_to_unicode().values())  # GPT-2/CLIP's printable stand-in for each byte
    vocab = chars + [c + "</w>" for c in chars] + SPECIAL_TOKENS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build(path: Path, seed: int = 0) -> Path:
    """Build the demo pipeline into `path` (atomically: concurrent builders do not collide)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=path.parent))
    try:
        write_tokenizer(staging / "tokenizer-src")
        tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer-src", model_max_length=77)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
        # Four levels: latents are 1/8 of the image, as in real Stable Diffusion, so a 512×512
        # request costs what a 64×64 latent costs.
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, norm_num_groups=32, sample_size=256)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
        # The scheduler config Stable Diffusion 1.5 ships.
        scheduler = PNDMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
            skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(
            unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        out = staging / "model"
        pipe.save_pretrained(out)
        try:
            os.rename(out, path)
        except OSError:
            if not (path / "model_index.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def ensure(path: Path, seed: int = 0, family: str = "sd1", inpainting: bool = False) -> Path:
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    if family == "sd1" and not inpainting:
        return build(path, seed)
    return build_family(path, family, seed, inpainting)


def build_family(path: Path, family: str, seed: int = 0, inpainting: bool = False) -> Path:
    """A tiny random-weight model of another family (its module in `demo_families`), saved atomically."""
    from . import demo_families

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=path.parent))
    try:
        write_tokenizer(staging / "tokenizer-src")
        pipe = demo_families.build(family, staging / "tokenizer-src", seed, inpainting)
        out = staging / "model"
        pipe.save_pretrained(out)
        try:
            os.rename(out, path)
        except OSError:
            if not (path / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def build_loras(model: Path, folder: Path) -> list[Path]:
    """Random LoRAs for a demo model, in both file formats users have: `demo-style` (diffusers/peft
    keys), `demo-kohya` (kohya/A1111 keys), and `demo-mismatch` (keys that match no layer)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionPipeline.from_pretrained(model)
    torch.manual_seed(123)
    kohya: dict[str, torch.Tensor] = {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-2:][0] in ("attn1", "attn2", "to_out"):
            key = "lora_unet_" + name.replace(".", "_")
            kohya[key + ".lora_down.weight"] = torch.randn(4, module.in_features) * 0.3
            kohya[key + ".lora_up.weight"] = torch.randn(module.out_features, 4) * 0.3
            kohya[key + ".alpha"] = torch.tensor(4.0)
    save_file(kohya, folder / "demo-kohya.safetensors", metadata={"ss_network_module": "networks.lora"})
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(8, 4)}, folder / "demo-mismatch.safetensors")
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True,
                                              weight_name="demo-style.safetensors")
    return [folder / f"{name}.safetensors" for name in ("demo-style", "demo-kohya", "demo-mismatch")]
