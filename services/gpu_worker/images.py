"""Encoding results: PNG with the generation parameters in a `parameters` text chunk (AUTOMATIC1111's
format, so other tools read them back), or JPEG."""

import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from schemas.jobs import Img2Img, JobSpec, OutputFormat


def infotext(spec: JobSpec, seed: int) -> str:
    """The AUTOMATIC1111 parameters text for one image."""
    fields = {
        "Steps": spec.steps,
        "Sampler": spec.scheduler or "default",
        "CFG scale": spec.guidance_scale,
        "Seed": seed,
        "Size": f"{spec.width}x{spec.height}",
        "Model": spec.model,
    }
    if isinstance(spec, Img2Img):
        fields["Denoising strength"] = spec.strength
    hires = getattr(spec, "hires", None)
    if hires is not None:
        fields.update({"Denoising strength": hires.denoising_strength, "Hires upscale": hires.scale,
                       "Hires steps": hires.steps, "Hires upscaler": hires.upscaler})
    lines = [spec.prompt]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def encode(image: Image.Image, fmt: OutputFormat, parameters: str) -> bytes:
    buf = io.BytesIO()
    if fmt is OutputFormat.PNG:
        info = PngInfo()
        info.add_text("parameters", parameters)
        image.save(buf, format="PNG", pnginfo=info)
    else:
        image.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()
