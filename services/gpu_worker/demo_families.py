"""Tiny random-weight models of the families beyond SD 1.x, built from configs with the demo model's
self-written CLIP vocabulary: the smallest shapes diffusers' own tests use that keep each family's
structure (SDXL: two CLIP encoders of different widths, the UNet's "text_time" embedding of pooled
text and size ids, SDXL's VAE scaling factor)."""

from pathlib import Path

FAMILIES = ("sd1", "sdxl", "sd3", "flux")


def _clip_config(tokenizer, hidden: int, projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=3, max_position_embeddings=77, projection_dim=projection, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _vae(scaling_factor: float, force_upcast: bool = True):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, sample_size=128, scaling_factor=scaling_factor,
        force_upcast=force_upcast).eval()


def build_sdxl(tokenizer_folder: Path, in_channels: int = 4):
    """SDXL base's structure in miniature; `in_channels=9` makes an inpainting model."""
    from diffusers import (EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77)
    tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77, pad_token="!")
    # The encoders differ in width (32 and 64, as CLIP-L and bigG differ), so a checkpoint's two
    # encoders cannot be mistaken for each other: cross-attention takes both joined (96).
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), cross_attention_dim=96,
        projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=32).eval()  # pooled + 6 size ids
    scheduler = EulerDiscreteScheduler(  # the scheduler config SDXL base ships
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon")
    pipeline_class = StableDiffusionXLPipeline if in_channels == 4 else StableDiffusionXLInpaintPipeline
    return pipeline_class(
        vae=_vae(0.13025), unet=unet, scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        text_encoder=CLIPTextModel(_clip_config(tokenizer, 32)).eval(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer_2, 64)).eval(),
        force_zeros_for_empty_prompt=True)


def t5_tokenizer():
    """A T5 tokenizer without a sentencepiece file: a Unigram vocabulary of one piece per character
    (and `▁`), which tokenizes any text, written with the `tokenizers` library."""
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 256)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -5.0) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def t5_encoder(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, dropout_rate=0.0,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)).eval()


def _flow_vae(scaling_factor: float, shift_factor: float):
    """A 16-channel VAE with the real model's constants (no quant convs, as SD3's and Flux's)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, sample_size=128, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=scaling_factor, shift_factor=shift_factor).eval()


def build_sd3(tokenizer_folder: Path):
    """SD 3.5's structure in miniature: two CLIP encoders with projection, T5, an MMDiT transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77)
    tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77, pad_token="!")
    t5 = t5_tokenizer()
    transformer = SD3Transformer2DModel(  # joint attention takes T5's width (64); pooled = 32 + 32
        sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=96).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(1.5305, 0.0609),
        text_encoder=CLIPTextModelWithProjection(_clip_config(tokenizer, 32)).eval(), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer_2, 32)).eval(), tokenizer_2=tokenizer_2,
        text_encoder_3=t5_encoder(t5), tokenizer_3=t5)


def build_flux(tokenizer_folder: Path, variant: str = "dev"):
    """Flux.1's structure in miniature: CLIP (pooled) and T5, double and single stream blocks, latents
    packed 2×2 (in_channels 64 = 16 × 4); `dev` embeds the distilled guidance, `schnell` does not."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=77)
    t5 = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
        guidance_embeds=variant == "dev", axes_dims_rope=(4, 6, 6)).eval()  # rope axes add up to the head's width
    dev = variant == "dev"  # the scheduler configs the two models ship
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                max_shift=1.15, shift=3.0 if dev else 1.0, use_dynamic_shifting=dev)
    return FluxPipeline(scheduler=scheduler, vae=_flow_vae(0.3611, 0.1159), tokenizer=tokenizer,
                        text_encoder=CLIPTextModel(_clip_config(tokenizer, 32)).eval(),
                        text_encoder_2=t5_encoder(t5), tokenizer_2=t5, transformer=transformer)


def build(family: str, tokenizer_folder: Path, seed: int = 0, inpainting: bool = False):
    import torch

    torch.manual_seed(seed)
    if family == "sdxl":
        return build_sdxl(tokenizer_folder, in_channels=9 if inpainting else 4)
    if inpainting:
        raise ValueError(f"no inpainting demo model for family {family!r}")
    if family == "sd3":
        return build_sd3(tokenizer_folder)
    if family in ("flux", "flux-schnell"):
        return build_flux(tokenizer_folder, "dev" if family == "flux" else "schnell")
    raise ValueError(f"no demo model for family {family!r}; known: {FAMILIES}")


def _randomise_lora(module, seed: int, std: float = 0.5) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def _kohya_pair(out: dict, key: str, in_features: int, out_features: int, generator) -> None:
    import torch

    out[key + ".lora_down.weight"] = torch.randn(4, in_features, generator=generator) * 0.3
    out[key + ".lora_up.weight"] = torch.randn(out_features, 4, generator=generator) * 0.3
    out[key + ".alpha"] = torch.tensor(4.0)


def build_sdxl_loras(model: Path, folder: Path) -> list[Path]:
    """Random SDXL LoRAs touching the UNet and both text encoders: `demo-style` (diffusers/peft keys)
    and `demo-kohya` (kohya keys with the UNet's original block names, as CivitAI files have them)."""
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .checkpoint import unet_keys

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = DiffusionPipeline.from_pretrained(model)
    generator = torch.Generator().manual_seed(123)
    kohya: dict[str, torch.Tensor] = {}
    linears = {name: m for name, m in pipe.unet.named_modules()
               if isinstance(m, torch.nn.Linear) and ".attn" in name and name.rsplit(".", 1)[-1] != "0"}
    original = unet_keys({name + ".weight": torch.zeros(1) for name in linears}, pipe.unet.config)
    for original_key, name in zip(original, linears):
        key = "lora_unet_" + original_key.removeprefix("model.diffusion_model.").removesuffix(".weight").replace(".", "_")
        _kohya_pair(kohya, key, linears[name].in_features, linears[name].out_features, generator)
    for n, encoder in ((1, pipe.text_encoder), (2, pipe.text_encoder_2)):
        width, inner = encoder.config.hidden_size, encoder.config.intermediate_size
        for i in range(encoder.config.num_hidden_layers):  # what kohya's sd-scripts train in CLIP
            layer = f"lora_te{n}_text_model_encoder_layers_{i}"
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                _kohya_pair(kohya, f"{layer}_self_attn_{proj}", width, width, generator)
            _kohya_pair(kohya, f"{layer}_mlp_fc1", width, inner, generator)
            _kohya_pair(kohya, f"{layer}_mlp_fc2", inner, width, generator)
    save_file(kohya, folder / "demo-kohya.safetensors", metadata={"ss_network_module": "networks.lora"})
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(8, 4)}, folder / "demo-mismatch.safetensors")
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    _randomise_lora(pipe.unet, 1)
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))}
    for n, (encoder, key) in enumerate(((pipe.text_encoder, "text_encoder_lora_layers"),
                                        (pipe.text_encoder_2, "text_encoder_2_lora_layers"))):
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), encoder)
        _randomise_lora(encoder, 2 + n)
        layers[key] = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
    StableDiffusionXLPipeline.save_lora_weights(folder, safe_serialization=True, weight_name="demo-style.safetensors",
                                               **layers)
    return [folder / f"{name}.safetensors" for name in ("demo-style", "demo-kohya", "demo-mismatch")]


def build_loras(model: Path, folder: Path) -> list[Path]:
    """Random LoRAs for a demo model of any family, in the formats users have."""
    from . import demo_model, families

    builders = {"sd1": demo_model.build_loras, "sdxl": build_sdxl_loras, "sd3": build_flow_loras,
                "flux": build_flow_loras}
    return builders[families.of_folder(model).name](model, folder)


def build_flow_loras(model: Path, folder: Path) -> list[Path]:
    """Random SD3 or Flux LoRAs: `demo-style` (diffusers/peft keys on the transformer's attention) and,
    for Flux, `demo-kohya` (kohya keys on BFL's block names and CLIP, as CivitAI's Flux LoRAs)."""
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .flow_checkpoint import plan

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = DiffusionPipeline.from_pretrained(model)
    made = [folder / "demo-style.safetensors"]
    if "num_single_layers" in pipe.transformer.config:
        generator = torch.Generator().manual_seed(123)
        shapes = {k: v.shape for k, v in pipe.transformer.state_dict().items()}
        kohya: dict = {}
        for original, keys, _ in plan(dict(pipe.transformer.config)):
            if original.endswith(("attn.qkv.weight", "attn.proj.weight", "linear1.weight", "linear2.weight")) \
                    and all(k in shapes for k in keys):
                out_features = sum(shapes[k][0] for k in keys)
                key = "lora_unet_" + original.removesuffix(".weight").replace(".", "_")
                _kohya_pair(kohya, key, shapes[keys[0]][1], out_features, generator)
        encoder = pipe.text_encoder
        for i in range(encoder.config.num_hidden_layers):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                width = encoder.config.hidden_size
                _kohya_pair(kohya, f"lora_te1_text_model_encoder_layers_{i}_self_attn_{proj}", width, width, generator)
        save_file(kohya, folder / "demo-kohya.safetensors", metadata={"ss_network_module": "networks.lora_flux"})
        made.append(folder / "demo-kohya.safetensors")
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    _randomise_lora(pipe.transformer, 1)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.transformer))
    type(pipe).save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=True,
                                 weight_name="demo-style.safetensors")
    return made
