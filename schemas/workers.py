"""What a worker announces in the `workers` KV bucket, refreshed while it lives."""

import msgspec

from .jobs import SCHEMA_VERSION


class WorkerAnnouncement(msgspec.Struct, kw_only=True):
    worker: str
    kind: str  # "gpu" | "upscale"
    models_served: list[str]
    models_loaded: list[str]
    device: str
    at: float
    loras: dict[str, str] = {}  # LoRA name -> sha256 of its file
    schema_version: int = SCHEMA_VERSION
