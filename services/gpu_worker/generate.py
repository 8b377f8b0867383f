"""One JobSpec through a diffusers pipeline: a fresh scheduler per job, one seeded generator per image."""

import contextlib
from collections.abc import Callable

from PIL import Image

from schemas.jobs import SCHEDULERS, HiresFix, Img2Img, Inpaint, InpaintFill, JobSpec, Txt2Img
from services.worker.outcomes import BadInput, Stopped

from . import inpaint as inpainting
from .families import FamilyError, LoadedModel


class GenerationError(BadInput):
    """The job cannot be done as asked (bad parameters that slipped past the API): fail, do not retry."""


# on_step(index, timesteps, latents) -> True to stop. `index` counts scheduler callbacks, of which
# some schedulers (Heun, KDPM2) make about two per step.
StepCallback = Callable[[int, int, object], bool]


def total_steps(spec: JobSpec) -> int:
    """Denoising steps the job runs: img2img and inpaint skip the first (1 - strength) of the schedule."""
    strength = inpaint_strength(spec) if isinstance(spec, Inpaint) else getattr(spec, "strength", 1.0)
    return max(1, min(spec.steps, int(spec.steps * strength)))


def scheduler_for(model: LoadedModel, name: str | None, options: dict | None = None):
    """A fresh scheduler for one job: the model's own, or a named class with options."""
    if name is not None and name not in SCHEDULERS:
        raise GenerationError(f"unknown scheduler {name!r}")
    try:
        return model.family.scheduler(model.pipe, name, options)
    except FamilyError as e:
        raise GenerationError(str(e)) from None


@contextlib.contextmanager
def family_errors():
    """What a model's family cannot do (a scheduler, a negative prompt) fails the job with the reason."""
    try:
        yield
    except FamilyError as e:
        raise GenerationError(str(e)) from None


def refine_steps(hires: HiresFix) -> int:
    return min(hires.steps, int(hires.steps * hires.denoising_strength))


def _call(model: LoadedModel, task: str, spec: JobSpec, on_step: StepCallback, seeds: list[int] | None = None,
          *, prompt: str | list[str], negative_prompt: str | list[str] | None = None, size: tuple[int, int],
          **kwargs):
    """One diffusers call (`task`: txt2img, img2img or inpaint) making images of `size`, with a fresh
    scheduler, per-image CPU generators (the same seed gives the same image on any device), the
    family's prompt encoding and size arguments, and a step callback that may stop it."""
    import torch
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    pipe, family = model.pipe, model.family
    view_class = {"txt2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
                  "inpaint": AutoPipelineForInpainting}[task]
    view = view_class.from_pipe(pipe, scheduler=scheduler_for(model, spec.scheduler, spec.scheduler_options))
    view.set_progress_bar_config(disable=True)
    stopped = False

    def on_step_end(p, index, timestep, tensors):
        nonlocal stopped
        latents = tensors.get("latents")
        if on_step(index, p.num_timesteps, None if latents is None else family.preview_rgb(pipe, latents, size)):
            stopped = p._interrupt = True
        return tensors

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if negative_prompt is None:
        negative_prompt = spec.negative_prompt
    negatives = list(negative_prompt) if isinstance(negative_prompt, list) else [negative_prompt] * len(prompts)
    with torch.inference_mode(), family_errors():
        kwargs.update(family.prompt_kwargs(pipe, prompts, negatives))
        kwargs.update(family.size_kwargs(task, *size))
        kwargs.update(family.guidance_kwargs(pipe, spec.guidance_scale, spec.true_cfg_scale, any(negatives)))
        out = view(generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds or spec.seeds],
                   callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"], **kwargs)
    if stopped:
        raise Stopped()
    return family.unpacked(pipe, out.images, size) if kwargs.get("output_type") == "latent" else out.images


def run(model: LoadedModel, spec: JobSpec, init_image: Image.Image | list[Image.Image] | None,
        on_step: StepCallback = lambda *_: False, output_type: str = "pil"):
    """Generate the images of `spec` (blocking; run it in an executor)."""
    common = dict(num_images_per_prompt=spec.num_images, num_inference_steps=spec.steps, output_type=output_type,
                  size=(spec.width, spec.height))
    if isinstance(spec, Img2Img):
        if init_image is None:
            raise GenerationError("img2img job without its init image")
        if isinstance(init_image, list):  # one image from each init image
            common.update(num_images_per_prompt=1)
            return _call(model, "img2img", spec, on_step, prompt=[spec.prompt] * len(init_image),
                         negative_prompt=[spec.negative_prompt] * len(init_image),
                         image=[i.convert("RGB") for i in init_image], strength=spec.strength, **common)
        return _call(model, "img2img", spec, on_step, prompt=spec.prompt, image=init_image.convert("RGB"),
                     strength=spec.strength, **common)
    return _call(model, "txt2img", spec, on_step, prompt=spec.prompt, **common)


def inpaint(model: LoadedModel, spec: Inpaint, init_image: Image.Image, mask_image: Image.Image | None,
            on_step: StepCallback = lambda *_: False) -> list[Image.Image]:
    """Repaint the masked area (or the outpaint margins); every other pixel stays as it was."""
    c = inpainting.canvas(spec, init_image, mask_image)
    if c.mask.getbbox() is None:
        raise GenerationError("the mask is empty: nothing to repaint")
    size = inpainting.work_size(c)
    image, mask = inpainting.region(c, size)
    pictures = _call(model, "inpaint", spec, on_step, prompt=spec.prompt, num_images_per_prompt=spec.num_images,
                     num_inference_steps=spec.steps, image=image, mask_image=mask, size=size,
                     strength=inpaint_strength(spec))
    return [inpainting.paste_back(c, picture) for picture in pictures]


def inpaint_strength(spec: Inpaint) -> float:
    return 1.0 if spec.inpainting_fill is InpaintFill.LATENT_NOISE else spec.strength


def run_batch(model: LoadedModel, specs: list[Txt2Img], on_step: StepCallback = lambda *_: False) -> list[Image.Image]:
    """Several compatible txt2img specs (equal schemas.jobs.batch_key) as one call, images in order."""
    first = specs[0]
    return _call(model, "txt2img", first, on_step, seeds=[seed for spec in specs for seed in spec.seeds],
                 prompt=[spec.prompt for spec in specs for _ in range(spec.num_images)],
                 negative_prompt=[spec.negative_prompt for spec in specs for _ in range(spec.num_images)],
                 num_images_per_prompt=1, num_inference_steps=first.steps, size=(first.width, first.height))


def refine(model: LoadedModel, spec: JobSpec, images, on_step: StepCallback = lambda *_: False) -> list[Image.Image]:
    """The hires fix's second pass: img2img over the upscaled images (PIL images or latents)."""
    hires = spec.hires
    if isinstance(images, list):
        images = [image.convert("RGB") for image in images]
    n = len(images)
    return _call(model, "img2img", spec, on_step, image=images, strength=hires.denoising_strength,
                 num_inference_steps=hires.steps, prompt=[spec.prompt] * n,
                 negative_prompt=[spec.negative_prompt] * n, size=(hires.width, hires.height))


def upscale_latents(model: LoadedModel, latents, hires: HiresFix):
    """A1111's `Latent` upscaler, as the model's family does it."""
    return model.family.upscale_latents(model.pipe, latents, hires.width, hires.height)
