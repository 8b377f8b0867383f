"""One JobSpec through a diffusers pipeline: a fresh scheduler per job, one seeded generator per image."""

from collections.abc import Callable

from PIL import Image

from schemas.jobs import SCHEDULERS, Img2Img, JobSpec


class GenerationError(Exception):
    """The job cannot be done as asked (bad parameters that slipped past the API): fail, do not retry."""


class Interrupted(Exception):
    """Generation stopped between steps because `on_step` asked it to (cancel or shutdown)."""


# on_step(index, timesteps, latents) -> True to stop. `index` counts scheduler callbacks, of which
# some schedulers (Heun, KDPM2) make about two per step.
StepCallback = Callable[[int, int, object], bool]


def total_steps(spec: JobSpec) -> int:
    """Denoising steps the job runs: img2img skips the first (1 - strength) of the schedule."""
    if isinstance(spec, Img2Img):
        return min(spec.steps, int(spec.steps * spec.strength))
    return spec.steps


def scheduler_for(pipe, name: str | None):
    import diffusers

    if name is None:
        return type(pipe.scheduler).from_config(pipe.scheduler.config)
    if name not in SCHEDULERS:
        raise GenerationError(f"unknown scheduler {name!r}")
    return getattr(diffusers, name).from_config(pipe.scheduler.config)


def run(pipe, spec: JobSpec, init_image: Image.Image | None,
        on_step: StepCallback = lambda *_: False) -> list[Image.Image]:
    """Generate the images of `spec` (blocking; run it in an executor)."""
    import torch
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    scheduler = scheduler_for(pipe, spec.scheduler)
    view_class = AutoPipelineForImage2Image if isinstance(spec, Img2Img) else AutoPipelineForText2Image
    view = view_class.from_pipe(pipe, scheduler=scheduler)
    view.set_progress_bar_config(disable=True)

    stopped = False

    def on_step_end(p, index, timestep, tensors):
        nonlocal stopped
        if on_step(index, p.num_timesteps, tensors.get("latents")):
            stopped = p._interrupt = True
        return tensors

    common = dict(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt or None,
        num_images_per_prompt=spec.num_images,
        num_inference_steps=spec.steps,
        guidance_scale=spec.guidance_scale,
        # CPU generators: the same seed gives the same image on any device.
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in spec.seeds],
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    with torch.inference_mode():
        if isinstance(spec, Img2Img):
            if init_image is None:
                raise GenerationError("img2img job without its init image")
            out = view(image=init_image.convert("RGB"), strength=spec.strength, **common)
        else:
            out = view(width=spec.width, height=spec.height, **common)
    if stopped:
        raise Interrupted()
    return out.images
