"""Input images from requests: data URIs or bare base64, checked to be real images within limits.
Format, size and pixel count are read from the header before any pixel is decoded."""

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from services.config import Limits

FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
RESIZE_MODES = {0: "just resize", 1: "crop and resize", 2: "resize and fill", 3: "just resize (latent upscale)"}


class ImageInputError(ValueError):
    pass


@dataclass(frozen=True)
class InputImage:
    data: bytes
    width: int
    height: int
    extension: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _payload(value: str, limits: Limits) -> bytes:
    payload = value
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
            raise ImageInputError("expected a data URI like data:image/png;base64,...")
    if len(payload) * 3 // 4 > limits.max_init_image_bytes:
        raise ImageInputError(f"image larger than {limits.max_init_image_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError("not valid base64") from None


def check_header(img: Image.Image, limits: Limits) -> None:
    """Format, sides and pixel count as the header states them: nothing decoded yet."""
    width, height = img.size
    if img.format not in FORMATS:
        raise ImageInputError(f"unsupported image format {img.format}; use PNG, JPEG or WebP")
    if width < 1 or height < 1:
        raise ImageInputError(f"image is {width}x{height}: empty")
    if width > limits.max_width or height > limits.max_height:
        raise ImageInputError(f"image is {width}x{height}, larger than {limits.max_width}x{limits.max_height}")
    if width * height > limits.max_input_pixels:
        raise ImageInputError(f"image has {width * height} pixels, more than {limits.max_input_pixels}")


def decode_image(value: str, limits: Limits) -> InputImage:
    """Blocking (decodes the whole image once its header passed): call it in a thread for large inputs."""
    data = _payload(value, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as img:
                check_header(img, limits)
                img.load()  # catches truncated and corrupt data
                fmt, (width, height) = img.format, img.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            SyntaxError, ValueError) as e:
        if isinstance(e, ImageInputError):
            raise
        raise ImageInputError(f"not a readable image ({e.__class__.__name__})") from None
    return InputImage(data=data, width=width, height=height, extension=FORMATS[fmt])


def as_png(img: Image.Image) -> InputImage:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return InputImage(data=buf.getvalue(), width=img.width, height=img.height, extension="png")


def resized(image: InputImage, width: int, height: int, mode: int) -> InputImage:
    """Blocking. A1111's resize of an init image to width×height: stretch (0, 3), crop (1) or fit and
    fill (2); the target is within the limits (validated before)."""
    with Image.open(io.BytesIO(image.data)) as img:
        img = img.convert("RGB")
        if mode == 1:
            img = ImageOps.fit(img, (width, height), Image.LANCZOS)
        elif mode == 2:
            img = ImageOps.pad(img, (width, height), Image.LANCZOS, centering=(0.5, 0.5))
        else:
            img = img.resize((width, height), Image.LANCZOS)
    return as_png(img)


def grown_mask(image: InputImage, erode_or_dilate: int) -> InputImage:
    """Blocking. Grow (positive) or shrink (negative) the white of a mask by that many pixels."""
    with Image.open(io.BytesIO(image.data)) as img:
        mask = img.convert("L")
    size = 2 * abs(erode_or_dilate) + 1
    return as_png(mask.filter(ImageFilter.MaxFilter(size) if erode_or_dilate > 0 else ImageFilter.MinFilter(size)))
