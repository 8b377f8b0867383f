"""What the flow-matching families (SD 3.5, Flux.1) share: CLIP and T5 text encoders, 16-channel
latents, flow-matching schedulers with the model's shift, bf16 on CUDA, and single-file checkpoints
that hold the transformer alone (text encoders and VAE come from the `config:` folder)."""

import inspect
from pathlib import Path

from .. import flow_checkpoint
from .. import prompts as syntax
from . import Family, FamilyError

# noise-prediction classes that sample flow-matching models when told to (flow sigmas, the model's shift)
FLOW_CAPABLE = {"DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler"}


class FlowFamily(Family):
    flow_matching = True
    cuda_dtype = "bfloat16"  # these models overflow in fp16; bf16 is what they are published in
    transformer_class = ""  # the diffusers class of the denoiser a single-file checkpoint holds
    t5_max_tokens = 256

    def load(self, folder: Path | None, checkpoint: Path | None, config: Path | None, dtype):
        """A folder as it is; a checkpoint's transformer with everything else from the config folder."""
        import diffusers
        from diffusers import AutoPipelineForText2Image

        if checkpoint is None:
            return AutoPipelineForText2Image.from_pretrained(folder, dtype=dtype)
        if config is None:
            raise FamilyError(f"{checkpoint}: a {self.name} checkpoint needs `config:` (a local diffusers folder of "
                              "the same model: its text encoders, VAE and configs)")
        transformer = flow_checkpoint.read(checkpoint, getattr(diffusers, self.transformer_class), config, dtype)
        return AutoPipelineForText2Image.from_pretrained(config, transformer=transformer, dtype=dtype)

    def size_kwargs(self, task: str, width: int, height: int) -> dict:
        return {"width": width, "height": height}  # img2img too: else the pipeline's default size

    def scheduler(self, pipe, name: str | None, options: dict | None = None):
        """The model's own flow-matching scheduler, a FlowMatch* class, or a DPM-Solver/UniPC class run
        on flow sigmas with the model's shift; a noise-prediction scheduler is refused."""
        import diffusers

        if name is None or name.startswith("FlowMatch"):
            return super().scheduler(pipe, name, options)
        if name not in FLOW_CAPABLE:
            raise FamilyError(f"{name} is not a flow-matching scheduler: {self.name} models need one "
                              f"(FlowMatch*, or {', '.join(sorted(FLOW_CAPABLE))})")
        own = pipe.scheduler.config
        flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": own.get("shift", 1.0),
                "use_dynamic_shifting": own.get("use_dynamic_shifting", False), "time_shift_type": "exponential"}
        cls = getattr(diffusers, name)
        accepted = set(inspect.signature(cls.__init__).parameters)
        self.check_scheduler(cls, flow)
        return super().scheduler(pipe, name, {**{k: v for k, v in flow.items() if k in accepted}, **(options or {})})

    def check_scheduler(self, cls, flow: dict) -> None:
        """A family whose pipeline cannot drive `cls` with these settings raises FamilyError."""

    def encode_clip(self, tokenizer, encoder, texts: list[str], count: int, hidden_layer: int | None):
        return [syntax.encode(tokenizer, encoder, text, count, hidden_layer=hidden_layer) for text in texts]

    def encode_t5(self, pipe, tokenizer, encoder, text: str, width: int):
        """T5's weighted embeddings of `text`; zeros where the model was loaded without T5 (as diffusers)."""
        import torch

        if encoder is None:
            return torch.zeros(1, self.t5_max_tokens, width, device=pipe.device, dtype=pipe.dtype)
        return syntax.encode_t5(tokenizer, encoder, text, self.t5_max_tokens)
