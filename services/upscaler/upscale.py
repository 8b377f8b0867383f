"""One image to exactly the size asked for: model passes until it is at least that big (a 4× model
asked for 8× runs twice), then a Lanczos resize to the exact size (a 4× model asked for 2× is
downscaled after)."""

from collections.abc import Callable

from PIL import Image

from services.config import UpscalerConfig
from services.worker.outcomes import Stopped

from .models import RESAMPLING, UpscalerRegistry
from .tiling import upscale_tiled

TileCallback = Callable[[int, int], bool]  # (tiles done, tiles in all) -> True to stop


def passes(scale: float, model_scale: int) -> int:
    count, reached = 0, 1.0
    while reached < scale - 1e-9:
        reached *= model_scale
        count += 1
    return count


def upscale(image: Image.Image, size: tuple[int, int], upscaler: str, registry: UpscalerRegistry,
            settings: UpscalerConfig, on_tile: TileCallback = lambda done, total: False) -> Image.Image:
    image = image.convert("RGB")
    if upscaler in RESAMPLING:
        on_tile(1, 1)
        return image.resize(size, RESAMPLING[upscaler])
    import numpy as np
    import torch

    descriptor = registry.model(upscaler)
    count = passes(max(size[0] / image.width, size[1] / image.height), descriptor.scale)
    dtype = next(descriptor.model.parameters()).dtype

    def run(tile):
        with torch.inference_mode():
            return descriptor(tile.to(registry.device, dtype)).float().cpu()

    for n in range(count):
        def tile_done(done: int, total: int, n=n) -> None:
            if on_tile(n * total + done, count * total):
                raise Stopped()

        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        y = upscale_tiled(run, x, descriptor.scale, settings.tile_size, settings.tile_overlap, tile_done)
        pixels = (y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(pixels)
    return image if image.size == size else image.resize(size, Image.LANCZOS)
