"""Flux.1 (dev, schnell, and the fine-tunes built on them): CLIP's pooled embedding and T5 (512 tokens
for dev, 256 for schnell), double and single stream transformer blocks on 16-channel latents packed
2×2 into a sequence, flow matching with a shift that grows with the image, 1024×1024 native. dev
embeds a distilled guidance (`guidance_scale`, 3.5) and takes a negative prompt only through true
CFG (`true_cfg_scale` above 1, twice the work per step); schnell runs 4 steps without guidance."""

import json
from pathlib import Path

from .. import prompts as syntax
from . import FamilyError
from .flow import FlowFamily

# ComfyUI's Flux latent -> RGB factors and bias (a fit of VAE decodes)
FLUX_LATENT_RGB = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778))
FLUX_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)


def distilled(pipe) -> bool:
    """Flux dev (and its fine-tunes) embed the guidance; schnell does not."""
    return bool(pipe.transformer.config.guidance_embeds)


def guidance_embedded(folder: Path | None, checkpoint: Path | None) -> bool:
    """From the files: dev has a guidance embedder (`guidance_in` in BFL's names), schnell none."""
    if checkpoint is not None:
        from safetensors import safe_open

        with safe_open(str(checkpoint), framework="pt") as f:
            return any("guidance_in." in key for key in f.keys())
    config = json.loads((Path(folder) / "transformer" / "config.json").read_text())
    return bool(config.get("guidance_embeds", False))


class Flux(FlowFamily):
    name = "flux"
    pipeline_classes = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    transformer_class = "FluxTransformer2DModel"
    native_size = (1024, 1024)
    latent_rgb = FLUX_LATENT_RGB
    latent_rgb_bias = FLUX_LATENT_RGB_BIAS

    def owns_checkpoint(self, keys: set[str]) -> bool:
        return any(key.removeprefix("model.diffusion_model.").startswith("double_blocks.") for key in keys)

    negative_needs_true_cfg = True

    def defaults(self, folder, checkpoint) -> tuple[int | None, float | None]:
        """dev: 28 steps at distilled guidance 3.5 (diffusers' defaults); schnell: 4 steps, no guidance."""
        return (28, 3.5) if guidance_embedded(folder, checkpoint) else (4, 0.0)

    def max_tokens(self, pipe) -> int:
        return 512 if distilled(pipe) else 256

    def check_scheduler(self, cls, flow: dict) -> None:
        # Flux's pipeline always hands the scheduler `mu`; DPM-Solver asserts on it unless it shifts dynamically
        if cls.__name__.startswith("DPMSolver") and not flow["use_dynamic_shifting"]:
            raise FamilyError(f"{cls.__name__} cannot follow this Flux model's fixed shift (schnell): "
                              "use Euler, Euler a, UniPC or LCM")

    def guidance_kwargs(self, pipe, guidance_scale: float, true_cfg_scale: float | None, negative: bool) -> dict:
        if negative and not (true_cfg_scale or 0) > 1:
            raise FamilyError("Flux has no negative prompt without true CFG: set true_cfg_scale above 1 (twice the "
                              "work per step) or leave the negative prompt empty")
        out = {"guidance_scale": guidance_scale}
        if negative:
            out["true_cfg_scale"] = true_cfg_scale
        return out

    def prompt_kwargs(self, pipe, prompts: list[str], negatives: list[str]) -> dict:
        """CLIP's pooled embedding of the prompt's first 75 tokens (A1111 syntax taken out; a pooled
        embedding has no tokens to weigh) and T5's weighted tokens of the whole prompt."""
        texts = prompts + negatives
        limit = self.max_tokens(pipe)
        if not syntax.has_syntax(texts):
            return {"prompt": prompts, "negative_prompt": negatives if any(negatives) else None,
                    "max_sequence_length": limit}
        import torch

        width = pipe.transformer.config.joint_attention_dim

        def encode(text: str):
            _, pooled = syntax.encode(pipe.tokenizer, pipe.text_encoder, text, 1)
            return self.encode_t5(pipe, pipe.tokenizer_2, pipe.text_encoder_2, text, width), pooled

        out = {}
        for prefix, batch in (("", prompts), ("negative_", negatives if any(negatives) else [])):
            if batch:
                encoded = [encode(t) for t in batch]
                out[prefix + "prompt_embeds"] = torch.cat([e for e, _ in encoded])
                out[prefix + "pooled_prompt_embeds"] = torch.cat([p for _, p in encoded])
        return out

    def load_lora(self, pipe, path, adapter: str) -> None:
        """diffusers/peft and ai-toolkit files as diffusers reads them; kohya / ComfyUI files (BFL's block
        names) through diffbus's own conversion, which follows the model's widths."""
        from safetensors.torch import load_file

        from ..flow_checkpoint import kohya_lora

        state = load_file(str(path))
        if any(key.startswith("lora_unet_") for key in state):
            state = kohya_lora(state, pipe.transformer)
        pipe.load_lora_weights(state, adapter_name=adapter)

    def encode_t5(self, pipe, tokenizer, encoder, text: str, width: int):
        return syntax.encode_t5(tokenizer, encoder, text, self.max_tokens(pipe))

    def unpacked(self, pipe, latents, size: tuple[int, int]):
        if latents.ndim == 4:
            return latents
        return pipe._unpack_latents(latents, size[1], size[0], pipe.vae_scale_factor)
