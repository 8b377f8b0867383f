"""Running a super-resolution model over an image in overlapping tiles, blended where they meet, so
memory follows the tile size rather than the image size."""

from collections.abc import Callable


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: every `tile - overlap` pixels, the last flush with the end."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    positions = list(range(0, length - tile, step))
    return positions + [length - tile]


def _ramp(size: int, fade: int, fade_start: bool, fade_end: bool):
    import torch

    weights = torch.ones(size)
    if fade > 0:
        ramp = (torch.arange(fade, dtype=torch.float32) + 0.5) / fade
        if fade_start:
            weights[:fade] = ramp
        if fade_end:
            weights[-fade:] = ramp.flip(0)
    return weights


def upscale_tiled(run: Callable, image, scale: int, tile: int, overlap: int,
                  on_tile: Callable[[int, int], None] = lambda done, total: None):
    """`run` maps a (1, C, h, w) tensor to (1, C, h·scale, w·scale); `image` is (1, C, H, W)."""
    import torch

    _, channels, height, width = image.shape
    ys, xs = starts(height, tile, overlap), starts(width, tile, overlap)
    if len(ys) == len(xs) == 1:
        out = run(image)
        on_tile(1, 1)
        return out
    out = torch.zeros(1, channels, height * scale, width * scale, dtype=torch.float32)
    weight = torch.zeros(1, 1, height * scale, width * scale, dtype=torch.float32)
    fade = overlap * scale
    total, done = len(ys) * len(xs), 0
    for y in ys:
        for x in xs:
            h, w = min(tile, height - y), min(tile, width - x)
            piece = run(image[:, :, y:y + h, x:x + w]).float().cpu()
            mask = (_ramp(h * scale, fade, y > 0, y + h < height)[:, None]
                    * _ramp(w * scale, fade, x > 0, x + w < width)[None, :])
            out[:, :, y * scale:(y + h) * scale, x * scale:(x + w) * scale] += piece * mask
            weight[:, :, y * scale:(y + h) * scale, x * scale:(x + w) * scale] += mask
            done += 1
            on_tile(done, total)
    return out / weight.clamp_min(1e-8)
