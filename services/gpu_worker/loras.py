"""LoRA files from the worker's folder: announced with their hashes, loaded for one job and unloaded
after it, so a LoRA never leaks into the next task."""

import hashlib
from contextlib import contextmanager
from pathlib import Path

from schemas.jobs import LoraRef

from .families import LoadedModel
from .generate import GenerationError

EXTENSIONS = (".safetensors",)


class LoraFolder:
    def __init__(self, folder: Path):
        self.folder = folder
        self._hashes: dict[Path, tuple[float, int, str]] = {}  # path -> (mtime, size, sha256)

    def files(self) -> dict[str, str]:
        """name -> sha256 of every LoRA file, hashing only new or changed files."""
        found = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir()):
                if path.suffix not in EXTENSIONS or not path.is_file():
                    continue
                stat = path.stat()
                cached = self._hashes.get(path)
                if cached is None or cached[:2] != (stat.st_mtime, stat.st_size):
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    self._hashes[path] = cached = (stat.st_mtime, stat.st_size, digest)
                found[path.stem] = cached[2]
        return found

    def path(self, name: str) -> Path:
        for extension in EXTENSIONS:
            candidate = self.folder / f"{name}{extension}"
            if candidate.is_file():
                return candidate
        raise GenerationError(f"LoRA {name!r} is not in this worker's LoRA folder")

    @contextmanager
    def applied(self, model: LoadedModel, loras: list[LoraRef]):
        """Load `loras` into `model` at their weights for the duration of one job."""
        if not loras:
            yield
            return
        pipe = model.pipe
        names = [f"lora_{i}" for i in range(len(loras))]
        try:
            for adapter, lora in zip(names, loras):
                try:
                    model.family.load_lora(pipe, self.path(lora.name), adapter)
                except (ValueError, KeyError, RuntimeError) as e:  # peft: no target module found, bad shapes
                    raise GenerationError(f"LoRA {lora.name!r} matched no layer of this model: {e}") from None
                loaded = {a for adapters in pipe.get_list_adapters().values() for a in adapters}
                if adapter not in loaded:
                    raise GenerationError(f"LoRA {lora.name!r} matched no layer of this model (wrong base model?)")
            pipe.set_adapters(names, adapter_weights=[lora.weight for lora in loras])
            yield
        finally:
            pipe.unload_lora_weights()
