"""What a worker announces in the `workers` KV bucket, refreshed while it lives."""

import msgspec

from .jobs import SCHEMA_VERSION


class ModelInfo(msgspec.Struct, kw_only=True):
    """What a gpu worker tells of a model it serves, read from its files."""

    family: str  # sd1 | sdxl ...
    width: int  # the size a request without one gets: config's, else the family's native size
    height: int
    sha256: str | None = None  # of a single-file checkpoint; A1111's short hash is its first 10 digits
    steps: int | None = None  # the defaults a request without them gets (config's, else the family's;
    guidance_scale: float | None = None  # None: the API's defaults)
    flow_matching: bool = False  # samples with flow-matching schedulers (SD3, Flux): A1111 names mean those
    negative_needs_true_cfg: bool = False  # Flux: a negative prompt only with true_cfg_scale above 1


class WorkerAnnouncement(msgspec.Struct, kw_only=True):
    worker: str
    kind: str  # "gpu" | "upscale"
    models_served: list[str]
    models_loaded: list[str]
    device: str
    at: float
    loras: dict[str, str] = {}  # LoRA name -> sha256 of its file
    models: dict[str, ModelInfo] = {}  # served model name -> what its files say
    schema_version: int = SCHEMA_VERSION
