"""Model registry: which models this worker serves, where they live, and an LRU of loaded pipelines
bounded by count and by the size of their weights."""

import gc
import hashlib
import logging
from collections import OrderedDict
from pathlib import Path

from services.observability import metrics, telemetry
from schemas.workers import ModelInfo
from services.config import DEMO_MODEL, Config, ConfigError, ModelConfig

from . import demo_model, families, model_configs, speed
from .families import LoadedModel

log = logging.getLogger("diffbus.gpu_worker")


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class ModelRegistry:
    """Loads each served model once, in worker.dtype (auto: the family's on CUDA, fp16, bf16 for SD3 and
    Flux; fp32 on the CPU)."""

    def __init__(self, config: Config):
        self.config = config
        wanted = config.worker.models or [m.name for m in config.models]
        unknown = [name for name in wanted if config.model(name) is None]
        if unknown:
            raise ValueError(f"worker.models names unknown models: {unknown}")
        self.served: list[ModelConfig] = [m for m in config.models if m.name in wanted]
        self.device = pick_device(config.worker.device)
        self.check_quantize()
        self._loaded: OrderedDict[str, object] = OrderedDict()  # least recently used first
        self.described: dict[str, ModelInfo] = {}
        self._hashes = FileHashes()

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def model_path(self, model: ModelConfig) -> Path:
        """The diffusers folder of a folder model."""
        if model.path is not None:
            return Path(model.path)
        assert model.name == DEMO_MODEL
        return demo_model.ensure(self.config.data_path / "models" / DEMO_MODEL)

    def files(self, model: ModelConfig) -> tuple[Path | None, Path | None, families.Family]:
        """A model's diffusers folder or single-file checkpoint (the other is None), and its family."""
        checkpoint = None if model.checkpoint is None else Path(model.checkpoint)
        folder = None if checkpoint is not None else self.model_path(model)
        return folder, checkpoint, families.detect(folder, checkpoint, model.family)

    def describe(self) -> dict[str, ModelInfo]:
        """Family, default size and checkpoint hash of every served model, from its files (blocking:
        a checkpoint is hashed once, then again only when its size or time changes)."""
        for model in self.served:
            folder, checkpoint, family = self.files(model)
            native = family.native_size
            steps, guidance = family.defaults(folder, checkpoint)
            self.described[model.name] = ModelInfo(
                family=family.name, width=model.width or native[0], height=model.height or native[1],
                sha256=None if checkpoint is None else self._hashes.sha256(checkpoint),
                steps=model.steps or steps, guidance_scale=guidance if model.guidance_scale is None else
                model.guidance_scale, flow_matching=family.flow_matching,
                negative_needs_true_cfg=family.negative_needs_true_cfg)
        return self.described

    def pipeline(self, name: str) -> LoadedModel:
        """The loaded text-to-image pipeline of `name` with its family (blocking: call from the executor)."""
        if name in self._loaded:
            self._loaded.move_to_end(name)
            metrics.MODEL_CACHE_HITS.labels(name).inc()
            return self._loaded[name]
        model = self._served(name)
        with telemetry.span("model.load", model=name, device=self.device):
            self._make_room(for_new=True)
            pipe = self._loaded[name] = self._load(model)
            self._make_room(for_new=False)
        metrics.MODEL_LOADS.labels(name).inc()
        return pipe

    def _make_room(self, for_new: bool) -> None:
        """Evict the least recently used pipelines beyond the configured count and size."""
        wcfg = self.config.worker
        limit_bytes = None if wcfg.max_loaded_gb is None else wcfg.max_loaded_gb * 2**30
        while self._loaded and (
                len(self._loaded) + for_new > wcfg.max_loaded_models
                or (not for_new and len(self._loaded) > 1 and limit_bytes is not None
                    and sum(map(weight_bytes, self._loaded.values())) > limit_bytes)):
            name, _ = self._loaded.popitem(last=False)
            log.info("unloaded model %s (least recently used)", name)
            gc.collect()
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()

    def _served(self, name: str) -> ModelConfig:
        for model in self.served:
            if model.name == name:
                return model
        raise KeyError(f"this worker does not serve model {name!r}")

    def _load(self, model: ModelConfig) -> LoadedModel:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        folder, checkpoint, family = self.files(model)
        dtype = weights_dtype(self.config.worker.dtype, self.device, family.cuda_dtype)
        config_folder = None if model.config is None else Path(model.config)
        if checkpoint is not None and config_folder is None:
            config_folder = model_configs.folder(family.name, self.config.data_path, self.config.worker.model_configs)
        pipe = family.load(folder, checkpoint, config_folder, dtype, model.quantize)
        if model.vae is not None:
            pipe.vae = load_vae(Path(model.vae), config_folder or folder, dtype)
        self._place(pipe)
        speed.apply(pipe, self.config.worker)
        log.info("loaded %s model %s from %s on %s (%s)", family.name, model.name, checkpoint or folder,
                 self.device, dtype)
        return LoadedModel(model.name, pipe, family)


    def _place(self, pipe) -> None:
        """On the device, or offloaded to it part by part (worker.offload, CUDA only); VAE tiling."""
        offload = self.config.worker.offload
        if offload == "none" or not self.device.startswith("cuda"):
            pipe.to(self.device)
        elif offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.enable_sequential_cpu_offload(device=self.device)
        if self.config.worker.vae_tiling:
            pipe.vae.enable_tiling()


    def check_quantize(self) -> None:
        """`quantize:` is for a family with a transformer, and nf4 / int8 need bitsandbytes and CUDA: say so
        when the worker starts, not at a job."""
        for model in self.served:
            if model.quantize is None:
                continue
            family = self.files(model)[2]
            if not family.quantizable:
                raise ConfigError(f"model {model.name}: quantize is for SD3 and Flux models; this one is {family.name}")
            check_quantize(model, self.device)


def check_quantize(model: ModelConfig, device: str) -> None:
    import importlib.util

    if model.quantize in ("nf4", "int8"):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"model {model.name}: quantize: {model.quantize} needs bitsandbytes "
                             "(pip install bitsandbytes); fp8 needs nothing more")
        if not device.startswith("cuda"):
            raise ConfigError(f"model {model.name}: quantize: {model.quantize} runs on CUDA only (bitsandbytes "
                             f"through diffusers); this worker's device is {device}; fp8 runs anywhere")


class FileHashes:
    """sha256 of files, computed again only when a file's size or modification time changes."""

    def __init__(self):
        self._known: dict[Path, tuple[float, int, str]] = {}

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        cached = self._known.get(path)
        if cached is None or cached[:2] != (stat.st_mtime, stat.st_size):
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
            self._known[path] = cached = (stat.st_mtime, stat.st_size, digest.hexdigest())
        return cached[2]


def weights_dtype(setting: str, device: str, cuda_auto: str = "float16"):
    """worker.dtype as a torch dtype: auto is the family's `cuda_auto` on CUDA, float32 elsewhere."""
    import torch

    if setting == "auto":
        return getattr(torch, cuda_auto) if device.startswith("cuda") else torch.float32
    return getattr(torch, setting)


def load_vae(path: Path, config_folder: Path, dtype):
    """A VAE named in config: a diffusers folder, or one .safetensors file read with the model's own
    VAE config. Its config's force_upcast says whether diffusers decodes it in fp32 under fp16."""
    from diffusers import AutoencoderKL

    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, torch_dtype=dtype)
    return AutoencoderKL.from_single_file(path, config=str(config_folder), subfolder="vae", local_files_only=True,
                                          torch_dtype=dtype)


def weight_bytes(model: LoadedModel) -> int:
    return sum(p.numel() * p.element_size() for component in model.pipe.components.values()
               if hasattr(component, "parameters") for p in component.parameters())
