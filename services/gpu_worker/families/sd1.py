"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, 4-channel latents at 1/8 of the image,
noise-prediction schedulers, 512×512 native."""

from .. import prompts as syntax
from . import Family

# latent channels -> RGB, a least-squares fit of VAE decodes (as A1111's and ComfyUI's cheap previews)
SD_LATENT_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))


class SD1(Family):
    name = "sd1"
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                        "StableDiffusionInpaintPipeline")
    single_file_class = "StableDiffusionPipeline"
    native_size = (512, 512)
    latent_rgb = SD_LATENT_RGB

    def owns_checkpoint(self, keys: set[str]) -> bool:
        return any(key.startswith("cond_stage_model.") for key in keys)

    def load_options(self) -> dict:
        return {"safety_checker": None, "requires_safety_checker": False}

    def prompt_kwargs(self, pipe, prompts: list[str], negatives: list[str]) -> dict:
        if not syntax.needs_encoding(pipe.tokenizer, prompts + negatives):
            return {"prompt": prompts, "negative_prompt": negatives if any(negatives) else None}
        import torch

        count = max(syntax.chunk_count(pipe.tokenizer, text) for text in prompts + negatives)
        with torch.no_grad():
            positive = torch.cat([syntax.encode(pipe.tokenizer, pipe.text_encoder, t, count)[0] for t in prompts])
            negative = torch.cat([syntax.encode(pipe.tokenizer, pipe.text_encoder, t, count)[0] for t in negatives])
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative}
