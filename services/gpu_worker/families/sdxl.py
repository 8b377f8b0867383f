"""Stable Diffusion XL (and Pony, Illustrious, NoobAI... built on it): two CLIP text encoders whose
penultimate layers are joined, a pooled embedding from the second, size conditioning, 4-channel
latents at 1/8 of the image, 1024×1024 native."""

from .. import prompts as syntax
from . import Family

# ComfyUI's SDXL latent -> RGB factors and bias (a fit of VAE decodes)
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                   (-0.3165, -0.2492, -0.2188))
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


class SDXL(Family):
    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                        "StableDiffusionXLInpaintPipeline")
    single_file_class = "StableDiffusionXLPipeline"
    native_size = (1024, 1024)
    latent_rgb = SDXL_LATENT_RGB
    latent_rgb_bias = SDXL_LATENT_RGB_BIAS

    def owns_checkpoint(self, keys: set[str]) -> bool:
        return any(key.startswith("conditioner.embedders.1.model.") for key in keys)

    def prompt_kwargs(self, pipe, prompts: list[str], negatives: list[str]) -> dict:
        """A1111's SDXL conditioning: each CLIP encoder's penultimate layer, weighted chunk by chunk,
        joined on the feature axis; the pooled embedding of the second encoder's first chunk; an
        all-empty negative prompt as zeros (when the model asks for it, as SDXL base does)."""
        texts = prompts + negatives
        encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        if pipe.text_encoder is None or not any(syntax.needs_encoding(tok, texts) for tok, _ in encoders):
            return {"prompt": prompts, "negative_prompt": negatives if any(negatives) else None}
        import torch

        count = max(syntax.chunk_count(tok, text) for tok, _ in encoders for text in texts)

        def encode(text: str):
            (first, _), (second, pooled) = (syntax.encode(tok, enc, text, count, hidden_layer=-2)
                                            for tok, enc in encoders)
            return torch.cat([first, second], dim=-1), pooled

        positive = [encode(text) for text in prompts]
        if not any(negatives) and pipe.config.get("force_zeros_for_empty_prompt", False):
            negative = [(torch.zeros_like(e), torch.zeros_like(p)) for e, p in positive]
        else:
            negative = [encode(text) for text in negatives]
        return {"prompt_embeds": torch.cat([e for e, _ in positive]),
                "pooled_prompt_embeds": torch.cat([p for _, p in positive]),
                "negative_prompt_embeds": torch.cat([e for e, _ in negative]),
                "negative_pooled_prompt_embeds": torch.cat([p for _, p in negative])}

    def size_kwargs(self, task: str, width: int, height: int) -> dict:
        """Size conditioning as A1111 sets it: original and target size are the image's, no crop."""
        conditioning = {"original_size": (height, width), "target_size": (height, width),
                        "crops_coords_top_left": (0, 0)}
        return conditioning if task == "img2img" else {"width": width, "height": height, **conditioning}
