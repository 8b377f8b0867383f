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
    quantizable = True
    cuda_dtype = "bfloat16"  # these models overflow in fp16; bf16 is what they are published in
    transformer_class = ""  # the diffusers class of the denoiser a single-file checkpoint holds
    t5_max_tokens = 256

    def load(self, folder: Path | None, checkpoint: Path | None, config: Path | None, dtype,
             quantize: str | None = None):
        """A folder as it is; a checkpoint's transformer with everything else from the config folder;
        the transformer quantized when asked (`quantize`)."""
        from diffusers import AutoPipelineForText2Image

        if checkpoint is not None and config is None:
            raise FamilyError(f"{checkpoint}: a {self.name} checkpoint needs `config:` (a local diffusers folder of "
                              "the same model: its text encoders, VAE and configs)")
        transformer = self.transformer(folder, checkpoint, config, dtype, quantize)
        if transformer is None:
            return AutoPipelineForText2Image.from_pretrained(folder, dtype=dtype)
        return AutoPipelineForText2Image.from_pretrained(config or folder, transformer=transformer, dtype=dtype)

    def transformer(self, folder, checkpoint, config, dtype, quantize: str | None):
        """The denoiser, when it is not loaded with the folder as it is: from a single file, and/or
        quantized. nf4 and int8 through bitsandbytes (diffusers' quantizer; CUDA only), fp8 as diffusers'
        layerwise casting (weights stored in float8, each layer computing in `dtype`)."""
        import diffusers

        cls = getattr(diffusers, self.transformer_class)
        if quantize in ("nf4", "int8"):
            from diffusers import BitsAndBytesConfig

            bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype) \
                if quantize == "nf4" else BitsAndBytesConfig(load_in_8bit=True)
            if checkpoint is None:
                return cls.from_pretrained(folder, subfolder="transformer", quantization_config=bnb, dtype=dtype)
            return cls.from_single_file(str(checkpoint), config=str(config), subfolder="transformer",
                                        quantization_config=bnb, local_files_only=True, torch_dtype=dtype)
        if checkpoint is not None:
            transformer = flow_checkpoint.read(checkpoint, cls, config, dtype)
        elif quantize is not None:
            transformer = cls.from_pretrained(folder, subfolder="transformer", dtype=dtype)
        else:
            return None
        if quantize == "fp8":
            import torch

            transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
        return transformer

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

    def encode_t5(self, pipe, tokenizer, encoder, text: str, width: int):
        """T5's weighted embeddings of `text`; zeros where the model was loaded without T5 (as diffusers)."""
        import torch

        if encoder is None:
            return torch.zeros(1, self.t5_max_tokens, width, device=pipe.device, dtype=pipe.dtype)
        return syntax.encode_t5(tokenizer, encoder, text, self.t5_max_tokens)
