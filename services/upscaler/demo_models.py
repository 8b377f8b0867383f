"""Tiny random-weight upscalers that spandrel recognises, made offline like the demo model: a Real-ESRGAN
compact (SRVGGNetCompact) as .safetensors and .pth, and a 1-block RRDB ESRGAN as .pth. They load
through the same code a real Real-ESRGAN file takes; their pictures are noise."""

from pathlib import Path

FILES = ("compact-x4.safetensors", "compact-x4.pth", "esrgan-x4.pth")


def build(folder: Path, seed: int = 0) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    from .compat import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    compact = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4).state_dict()
    save_file(compact, folder / FILES[0])
    torch.save(compact, folder / FILES[1])
    torch.save(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).state_dict(), folder / FILES[2])
    return [folder / name for name in FILES]
