"""The upscaler registry: Lanczos and Nearest always, plus any model file spandrel recognises, named in
config. Models load on first use; a Lanczos job never imports torch or spandrel."""

import logging
from pathlib import Path

from PIL import Image

from services.config import Config

log = logging.getLogger("diffbus.upscaler")

RESAMPLING = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}


class UnknownUpscaler(ValueError):
    pass


class UpscalerRegistry:
    def __init__(self, config: Config):
        self.config = config
        self.paths = {u.name: Path(u.path) for u in config.upscalers}
        self._loaded: dict[str, object] = {}
        self._device: str | None = None

    @property
    def names(self) -> list[str]:
        return self.config.upscaler_names

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    @property
    def device(self) -> str:
        if self._device is None:
            setting = self.config.upscaler.device
            if setting == "auto":
                import torch

                setting = "cuda" if torch.cuda.is_available() else "cpu"
            self._device = setting
        return self._device

    def model(self, name: str):
        """The spandrel ImageModelDescriptor for `name` (blocking; loads once)."""
        if name in self._loaded:
            return self._loaded[name]
        if name not in self.paths:
            raise UnknownUpscaler(f"no upscaler named {name!r} is configured on this worker")
        from .compat import import_spandrel

        spandrel = import_spandrel()
        descriptor = spandrel.ModelLoader(device=self.device).load_from_file(str(self.paths[name]))
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise ValueError(f"{self.paths[name]} is not an image-to-image model")
        descriptor.eval()
        if self.device.startswith("cuda") and self.config.upscaler.half and descriptor.supports_half:
            descriptor.model.half()
        log.info("loaded upscaler %s (%s, %d×) on %s", name, descriptor.architecture.name, descriptor.scale,
                 self.device)
        self._loaded[name] = descriptor
        return descriptor
