"""Importing spandrel where torchvision is missing.

spandrel imports torchvision at package import, but only two architectures use it (LaMa: rotate;
RestoreFormer: normalize), none of the super-resolution ones. Where torch has no usable torchvision
(the CPU torch 2.13.0 build has none), spandrel is installed with `--no-deps` and imported here with a
minimal stand-in placed in sys.modules only during the import and removed after, so diffusers and
transformers still see "torchvision not installed". Where a real torchvision imports, it is used and
the stand-in never is.
"""

import enum
import importlib
import sys
import types

STANDIN = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA build that fails on a CPU torch
        return False
    return True


def import_spandrel():
    if "spandrel" in sys.modules or _has_torchvision():
        return importlib.import_module("spandrel")
    saved = {name: sys.modules.get(name) for name in STANDIN}
    vision, transforms, functional = (types.ModuleType(name) for name in STANDIN)

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    def unavailable(*_args, **_kwargs):
        raise NotImplementedError("this architecture needs torchvision, which is not installed")

    def normalize(tensor, mean, std, inplace=False):
        import torch

        mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return tensor.sub_(mean).div_(std) if inplace else (tensor - mean) / std

    functional.InterpolationMode, functional.rotate, functional.normalize = InterpolationMode, unavailable, normalize
    vision.transforms, transforms.functional = transforms, functional
    sys.modules.update(zip(STANDIN, (vision, transforms, functional)))
    try:
        return importlib.import_module("spandrel")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
