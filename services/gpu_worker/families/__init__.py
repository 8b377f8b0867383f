"""Model families (SD 1.x, SDXL, ...): one module per family behind one small interface, chosen once
when a model loads. Generation code calls the interface and never asks which family a model is.

A family knows how to load its pipeline (a diffusers folder or one original-layout checkpoint), encode
prompts with AUTOMATIC1111 syntax, load a LoRA, set size conditioning, map latents to a preview, make
a scheduler from a class name, and upscale latents for the `Latent` hires fix. Families differ in
their text encoders (CLIP, CLIP + CLIP, CLIP + T5), latents (4 or 16 channels, packed or not) and
schedulers (noise-prediction or flow-matching); methods a family cannot do raise NotImplementedError.
"""

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path


class FamilyError(ValueError):
    """The model's files name no family diffbus knows, or a family cannot do what was asked."""


class Family:
    """The interface; the SD 1.x behaviour is the default where a family shares it."""

    name = ""
    # diffusers pipeline classes written in a model_index.json that mark this family
    pipeline_classes: tuple[str, ...] = ()
    single_file_class = ""  # the diffusers class whose from_single_file reads this family's checkpoints
    native_size = (512, 512)  # width, height a request without a size gets
    latent_rgb: tuple[tuple[float, float, float], ...] = ()  # latent channel -> RGB, for previews
    latent_rgb_bias = (0.0, 0.0, 0.0)
    flow_matching = False  # schedulers are flow-matching ones (SD3, Flux)
    negative_needs_true_cfg = False  # a negative prompt only with true_cfg_scale (Flux's distilled guidance)
    cuda_dtype = "float16"  # the weights' type on CUDA (the CPU computes in float32)

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # loading

    def owns_checkpoint(self, keys: set[str]) -> bool:
        """Whether a single-file checkpoint with these tensor names is of this family."""
        return False

    quantizable = False  # takes `quantize:` (a transformer denoiser: SD3, Flux)

    def load(self, folder: Path | None, checkpoint: Path | None, config: Path | None, dtype,
             quantize: str | None = None):
        """The text-to-image pipeline from a diffusers folder, or from a checkpoint with its configs."""
        from diffusers import AutoPipelineForText2Image

        if checkpoint is None:
            return AutoPipelineForText2Image.from_pretrained(folder, dtype=dtype, **self.load_options())
        import diffusers

        cls = getattr(diffusers, self.single_file_class)
        return cls.from_single_file(checkpoint, config=str(config) if config else None, local_files_only=True,
                                    torch_dtype=dtype, **self.load_options())

    def defaults(self, folder: Path | None, checkpoint: Path | None) -> tuple[int | None, float | None]:
        """Steps and guidance a request without them gets on this model; None: the service's defaults."""
        return None, None

    def load_options(self) -> dict:
        return {}

    # per job

    def prompt_kwargs(self, pipe, prompts: list[str], negatives: list[str]) -> dict:
        """The pipeline's prompt arguments for a batch: text, or embeddings for A1111 syntax."""
        raise NotImplementedError

    def size_kwargs(self, task: str, width: int, height: int) -> dict:
        """Size arguments (and size conditioning) for a `task` (txt2img, img2img, inpaint) that makes
        width × height images."""
        return {} if task == "img2img" else {"width": width, "height": height}

    def scheduler(self, pipe, name: str | None, options: dict | None = None):
        """A fresh scheduler: the model's own (None) or a diffusers class name, with options."""
        import diffusers

        cls = type(pipe.scheduler) if name is None else getattr(diffusers, name)
        unknown = set(options or {}) - set(inspect.signature(cls.__init__).parameters)
        if unknown:
            raise FamilyError(f"{cls.__name__} does not take {sorted(unknown)}")
        return cls.from_config(pipe.scheduler.config, **(options or {}))

    def load_lora(self, pipe, path: Path, adapter: str) -> None:
        """Load one LoRA file into every part it has weights for (UNet or transformer, text encoders)."""
        pipe.load_lora_weights(str(path), adapter_name=adapter)

    def guidance_kwargs(self, pipe, guidance_scale: float, true_cfg_scale: float | None, negative: bool) -> dict:
        """The pipeline's guidance arguments: classifier-free guidance at `guidance_scale` here; a
        family with distilled guidance (Flux) reads `true_cfg_scale` and whether a negative prompt is set."""
        return {"guidance_scale": guidance_scale}

    def preview_rgb(self, pipe, latents, size: tuple[int, int]):
        """(B, 3, h, w) roughly in [-1, 1]: the denoising latents of width × height `size` images as
        colours, without the VAE."""
        import torch

        latents = self.unpacked(pipe, latents, size)
        matrix = torch.tensor(self.latent_rgb, dtype=latents.dtype, device=latents.device)
        bias = torch.tensor(self.latent_rgb_bias, dtype=latents.dtype, device=latents.device)
        return torch.einsum("bchw,cr->brhw", latents, matrix) + bias[None, :, None, None]

    def unpacked(self, pipe, latents, size: tuple[int, int]):
        """(B, C, h, w) latents of width × height images from the form the pipeline works on (Flux
        packs them into a sequence)."""
        return latents

    def upscale_latents(self, pipe, latents, width: int, height: int):
        """A1111's `Latent` upscaler: bilinear in latent space to the final size over the VAE's factor."""
        import torch.nn.functional as F

        factor = pipe.vae_scale_factor
        return F.interpolate(latents, size=(height // factor, width // factor), mode="bilinear")


@dataclass
class LoadedModel:
    """A loaded pipeline with the family it was loaded as: what the generation code is handed."""

    name: str
    pipe: object
    family: Family
    info: dict = field(default_factory=dict)  # what the worker announces: family, native size, hash


def families() -> dict[str, Family]:
    from .flux import Flux
    from .sd1 import SD1
    from .sd3 import SD3
    from .sdxl import SDXL

    return {family.name: family for family in (SD1(), SDXL(), SD3(), Flux())}


def by_name(name: str) -> Family:
    try:
        return families()[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r}; known: {sorted(families())}") from None


def of_folder(folder: Path) -> Family:
    """The family of a diffusers folder, from the pipeline class its model_index.json names."""
    index = Path(folder) / "model_index.json"
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        raise FamilyError(f"{folder} is not a diffusers model folder ({e})") from None
    for family in families().values():
        if class_name in family.pipeline_classes:
            return family
    raise FamilyError(f"{folder}: no family diffbus knows uses {class_name}")


def of_checkpoint(path: Path) -> Family:
    """The family of a single-file checkpoint, from its tensor names (the header alone is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    for family in families().values():
        if family.owns_checkpoint(keys):
            return family
    raise FamilyError(f"{path}: its tensor names match no model family diffbus knows")


def detect(folder: Path | None, checkpoint: Path | None, override: str | None = None) -> Family:
    """The family named in config, else the one the files show."""
    if override is not None:
        return by_name(override)
    return of_checkpoint(checkpoint) if checkpoint is not None else of_folder(folder)
