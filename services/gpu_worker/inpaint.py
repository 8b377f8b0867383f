"""Preparing an inpaint or outpaint job's canvas and mask, and pasting the result back so that only
the masked pixels change."""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from schemas.jobs import Inpaint, InpaintFill

GREY = (128, 128, 128)


@dataclass
class Canvas:
    image: Image.Image  # RGB, what the pipeline starts from
    mask: Image.Image  # L, hard: 255 = repaint
    feather: Image.Image  # L, the mask blurred inwards: how much of the result to keep per pixel
    box: tuple[int, int, int, int]  # the region generated (all of it, or the crop around the mask)


def _round8(n: int) -> int:
    return max(8, (n + 7) // 8 * 8)


def canvas(spec: Inpaint, init: Image.Image, mask: Image.Image | None) -> Canvas:
    image = init.convert("RGB")
    if spec.outpaint is not None:
        o = spec.outpaint
        pixels = np.pad(np.asarray(image), ((o.top, o.bottom), (o.left, o.right), (0, 0)), mode="edge")
        image = Image.fromarray(pixels)
        hard = Image.new("L", image.size, 255)
        hard.paste(0, (o.left, o.top, o.left + init.width, o.top + init.height))
    else:
        hard = mask.convert("L").resize(image.size).point(lambda v: 255 if v >= 128 else 0)
    if spec.invert_mask:
        hard = ImageOps.invert(hard)
    feather = hard
    if spec.mask_blur:
        # Blur, then keep only what lies inside the hard mask: the seam fades inwards.
        blurred = hard.filter(ImageFilter.GaussianBlur(spec.mask_blur))
        feather = Image.fromarray(np.minimum(np.asarray(blurred), np.asarray(hard)))
    if spec.inpainting_fill is InpaintFill.LATENT_NOTHING:
        image = Image.composite(Image.new("RGB", image.size, GREY), image, hard)
    box = (0, 0, *image.size)
    if spec.inpaint_full_res and hard.getbbox():
        x0, y0, x1, y1 = hard.getbbox()
        pad = spec.inpaint_full_res_padding
        box = (max(0, x0 - pad), max(0, y0 - pad), min(image.width, x1 + pad), min(image.height, y1 + pad))
    return Canvas(image, hard, feather, box)


def work_size(c: Canvas) -> tuple[int, int]:
    """The size the region is generated at: a crop around the mask is enlarged to the canvas's size
    (so small masked areas get full detail); rounded up to multiples of 8."""
    width, height = c.box[2] - c.box[0], c.box[3] - c.box[1]
    scale = min(c.image.width / width, c.image.height / height)
    return _round8(round(width * scale)), _round8(round(height * scale))


def region(c: Canvas, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    return c.image.crop(c.box).resize(size, Image.LANCZOS), c.mask.crop(c.box).resize(size, Image.NEAREST)


def paste_back(c: Canvas, generated: Image.Image) -> Image.Image:
    """The canvas with the generated region blended in through the feathered mask."""
    width, height = c.box[2] - c.box[0], c.box[3] - c.box[1]
    layer = c.image.copy()
    layer.paste(generated.convert("RGB").resize((width, height), Image.LANCZOS), c.box[:2])
    return Image.composite(layer, c.image, c.feather)
