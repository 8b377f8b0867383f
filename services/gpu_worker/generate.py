"""One JobSpec through a diffusers pipeline: a fresh scheduler per job, one seeded generator per image."""

from collections.abc import Callable

from PIL import Image

from schemas.jobs import SCHEDULERS, HiresFix, Img2Img, Inpaint, InpaintFill, JobSpec, Txt2Img
from services.worker.outcomes import BadInput, Stopped

from . import inpaint as inpainting
from . import prompts as prompts_syntax


class GenerationError(BadInput):
    """The job cannot be done as asked (bad parameters that slipped past the API): fail, do not retry."""


# on_step(index, timesteps, latents) -> True to stop. `index` counts scheduler callbacks, of which
# some schedulers (Heun, KDPM2) make about two per step.
StepCallback = Callable[[int, int, object], bool]


def total_steps(spec: JobSpec) -> int:
    """Denoising steps the job runs: img2img and inpaint skip the first (1 - strength) of the schedule."""
    strength = inpaint_strength(spec) if isinstance(spec, Inpaint) else getattr(spec, "strength", 1.0)
    return max(1, min(spec.steps, int(spec.steps * strength)))


def scheduler_for(pipe, name: str | None, options: dict | None = None):
    """A fresh scheduler: the model's own or a named class, with options its constructor takes."""
    import inspect

    import diffusers

    if name is not None and name not in SCHEDULERS:
        raise GenerationError(f"unknown scheduler {name!r}")
    cls = type(pipe.scheduler) if name is None else getattr(diffusers, name)
    unknown = set(options or {}) - set(inspect.signature(cls.__init__).parameters)
    if unknown:
        raise GenerationError(f"{cls.__name__} does not take {sorted(unknown)}")
    return cls.from_config(pipe.scheduler.config, **(options or {}))


def refine_steps(hires: HiresFix) -> int:
    return min(hires.steps, int(hires.steps * hires.denoising_strength))


def _call(pipe, task: str, spec: JobSpec, on_step: StepCallback, seeds: list[int] | None = None, **kwargs):
    """One diffusers call (`task`: txt2img, img2img or inpaint) with a fresh scheduler, per-image CPU
    generators (the same seed gives the same image on any device) and a step callback that may stop it."""
    import torch
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    view_class = {"txt2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
                  "inpaint": AutoPipelineForInpainting}[task]
    view = view_class.from_pipe(pipe, scheduler=scheduler_for(pipe, spec.scheduler, spec.scheduler_options))
    view.set_progress_bar_config(disable=True)
    stopped = False

    def on_step_end(p, index, timestep, tensors):
        nonlocal stopped
        if on_step(index, p.num_timesteps, tensors.get("latents")):
            stopped = p._interrupt = True
        return tensors

    kwargs.setdefault("negative_prompt", spec.negative_prompt or None)
    _use_own_prompt_encoding(pipe, kwargs)
    with torch.inference_mode():
        out = view(guidance_scale=spec.guidance_scale,
                   generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds or spec.seeds],
                   callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"], **kwargs)
    if stopped:
        raise Stopped()
    return out.images


def _use_own_prompt_encoding(pipe, kwargs: dict) -> None:
    """Weighted or long prompts become embeddings (A1111 syntax); plain ones stay text for diffusers."""
    prompt, negative = kwargs["prompt"], kwargs["negative_prompt"]
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = negative if isinstance(negative, list) else [negative or ""] * len(prompts)
    encoded = prompts_syntax.embeddings(pipe, prompts, negatives)
    if encoded is not None:
        del kwargs["prompt"], kwargs["negative_prompt"]
        kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"] = encoded


def run(pipe, spec: JobSpec, init_image: Image.Image | list[Image.Image] | None, on_step: StepCallback = lambda *_: False,
        output_type: str = "pil"):
    """Generate the images of `spec` (blocking; run it in an executor)."""
    common = dict(prompt=spec.prompt, num_images_per_prompt=spec.num_images, num_inference_steps=spec.steps,
                  output_type=output_type)
    if isinstance(spec, Img2Img):
        if init_image is None:
            raise GenerationError("img2img job without its init image")
        if isinstance(init_image, list):  # one image from each init image
            common.update(prompt=[spec.prompt] * len(init_image), num_images_per_prompt=1)
            if spec.negative_prompt:
                common["negative_prompt"] = [spec.negative_prompt] * len(init_image)
            return _call(pipe, "img2img", spec, on_step, image=[i.convert("RGB") for i in init_image],
                         strength=spec.strength, **common)
        return _call(pipe, "img2img", spec, on_step, image=init_image.convert("RGB"), strength=spec.strength,
                     **common)
    return _call(pipe, "txt2img", spec, on_step, width=spec.width, height=spec.height, **common)


def inpaint(pipe, spec: Inpaint, init_image: Image.Image, mask_image: Image.Image | None,
            on_step: StepCallback = lambda *_: False) -> list[Image.Image]:
    """Repaint the masked area (or the outpaint margins); every other pixel stays as it was."""
    c = inpainting.canvas(spec, init_image, mask_image)
    if c.mask.getbbox() is None:
        raise GenerationError("the mask is empty: nothing to repaint")
    size = inpainting.work_size(c)
    image, mask = inpainting.region(c, size)
    pictures = _call(pipe, "inpaint", spec, on_step, prompt=spec.prompt, num_images_per_prompt=spec.num_images,
                     num_inference_steps=spec.steps, image=image, mask_image=mask, width=size[0], height=size[1],
                     strength=inpaint_strength(spec))
    return [inpainting.paste_back(c, picture) for picture in pictures]


def inpaint_strength(spec: Inpaint) -> float:
    return 1.0 if spec.inpainting_fill is InpaintFill.LATENT_NOISE else spec.strength


def run_batch(pipe, specs: list[Txt2Img], on_step: StepCallback = lambda *_: False) -> list[Image.Image]:
    """Several compatible txt2img specs (equal schemas.jobs.batch_key) as one call, images in order."""
    first = specs[0]
    prompts = [spec.prompt for spec in specs for _ in range(spec.num_images)]
    negatives = [spec.negative_prompt for spec in specs for _ in range(spec.num_images)]
    return _call(pipe, "txt2img", first, on_step, seeds=[seed for spec in specs for seed in spec.seeds],
                 prompt=prompts, negative_prompt=negatives if any(negatives) else None, num_images_per_prompt=1,
                 num_inference_steps=first.steps, width=first.width, height=first.height)


def refine(pipe, spec: JobSpec, images, on_step: StepCallback = lambda *_: False) -> list[Image.Image]:
    """The hires fix's second pass: img2img over the upscaled images (PIL images or latents)."""
    hires = spec.hires
    if isinstance(images, list):
        images = [image.convert("RGB") for image in images]
    n = len(images)
    return _call(pipe, "img2img", spec, on_step, image=images, strength=hires.denoising_strength,
                 num_inference_steps=hires.steps, prompt=[spec.prompt] * n,
                 negative_prompt=[spec.negative_prompt] * n if spec.negative_prompt else None)


def upscale_latents(pipe, latents, hires: HiresFix):
    """A1111's `Latent` upscaler: bilinear in latent space, to the final size over the VAE's factor."""
    import torch.nn.functional as F

    factor = pipe.vae_scale_factor
    return F.interpolate(latents, size=(hires.height // factor, hires.width // factor), mode="bilinear")
