"""Stable Diffusion 3 and 3.5 (Medium, Large, Large Turbo): two CLIP encoders and T5 (256 tokens),
an MMDiT transformer on 16-channel latents at 1/8 of the image, flow matching, 1024×1024 native."""

from .. import prompts as syntax
from .flow import FlowFamily

# ComfyUI's SD3 latent -> RGB factors and bias (a fit of VAE decodes)
SD3_LATENT_RGB = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189))
SD3_LATENT_RGB_BIAS = (0.2394, 0.2135, 0.1925)


class SD3(FlowFamily):
    name = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                        "StableDiffusion3InpaintPipeline")
    transformer_class = "SD3Transformer2DModel"
    native_size = (1024, 1024)
    latent_rgb = SD3_LATENT_RGB
    latent_rgb_bias = SD3_LATENT_RGB_BIAS

    def defaults(self, folder, checkpoint) -> tuple[int | None, float | None]:
        return 28, 3.5  # the SD 3.5 Large model card's

    def owns_checkpoint(self, keys: set[str]) -> bool:
        return any(key.removeprefix("model.diffusion_model.").startswith("joint_blocks.") for key in keys)

    def prompt_kwargs(self, pipe, prompts: list[str], negatives: list[str]) -> dict:
        """As diffusers conditions SD3, with A1111 weights and chunks: both CLIP encoders' penultimate
        layers joined (75-token chunks, weighted) and padded to T5's width, then T5's weighted tokens;
        the pooled embeddings of both CLIP encoders' first chunks."""
        texts = prompts + negatives
        clips = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        t5_syntax = pipe.tokenizer_3 is not None and syntax.has_syntax(texts)
        if not t5_syntax and not any(syntax.needs_encoding(tok, texts) for tok, _ in clips):
            return {"prompt": prompts, "negative_prompt": negatives if any(negatives) else None,
                    "max_sequence_length": self.t5_max_tokens}
        import torch
        import torch.nn.functional as F

        count = max(syntax.chunk_count(tok, text) for tok, _ in clips for text in texts)
        width = pipe.transformer.config.joint_attention_dim

        def encode(text: str):
            (first, pooled_1), (second, pooled_2) = (syntax.encode(tok, enc, text, count, hidden_layer=-2)
                                                     for tok, enc in clips)
            clip = torch.cat([first, second], dim=-1)
            clip = F.pad(clip, (0, width - clip.shape[-1]))
            t5 = self.encode_t5(pipe, pipe.tokenizer_3, pipe.text_encoder_3, text, width).to(clip.dtype)
            return torch.cat([clip, t5], dim=-2), torch.cat([pooled_1, pooled_2], dim=-1)

        positive, negative = [encode(t) for t in prompts], [encode(t) for t in negatives]
        return {"prompt_embeds": torch.cat([e for e, _ in positive]),
                "pooled_prompt_embeds": torch.cat([p for _, p in positive]),
                "negative_prompt_embeds": torch.cat([e for e, _ in negative]),
                "negative_pooled_prompt_embeds": torch.cat([p for _, p in negative])}
