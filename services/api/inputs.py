"""Input images from requests: data URIs or bare base64, checked to be real images within limits."""

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from services.config import Limits

FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


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


def decode_image(value: str, limits: Limits) -> InputImage:
    """Blocking (decodes the whole image): call it in a thread for large inputs."""
    payload = value
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
            raise ImageInputError("expected a data URI like data:image/png;base64,...")
    if len(payload) * 3 // 4 > limits.max_init_image_bytes:
        raise ImageInputError(f"image larger than {limits.max_init_image_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError("not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
            if fmt not in FORMATS:
                raise ImageInputError(f"unsupported image format {fmt}; use PNG, JPEG or WebP")
            if width > limits.max_width or height > limits.max_height:
                raise ImageInputError(
                    f"image is {width}x{height}, larger than {limits.max_width}x{limits.max_height}")
            img.load()  # catches truncated and corrupt data
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageInputError(f"not a readable image ({e.__class__.__name__})") from None
    return InputImage(data=data, width=width, height=height, extension=FORMATS[fmt])
