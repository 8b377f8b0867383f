"""The whole config: every section, the checks that span sections, and the paths and names derived
from them."""

import ipaddress
from pathlib import Path

import msgspec

from .sections import (
    DEMO_MODEL,
    ApiConfig,
    ApiKey,
    ClientConfig,
    Defaults,
    FooocusConfig,
    Limits,
    MetricsConfig,
    ModelConfig,
    NatsConfig,
    NotifierConfig,
    ProgressConfig,
    ProjectorConfig,
    QuotasConfig,
    RetentionConfig,
    SdWorkManagerConfig,
    Section,
    StorageConfig,
    UpscalerConfig,
    UpscalerModel,
    WorkerConfig,
)


class Config(Section):
    data_dir: str = "data"
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    limits: Limits = msgspec.field(default_factory=Limits)
    defaults: Defaults = msgspec.field(default_factory=Defaults)
    models: list[ModelConfig] = []  # empty: the built-in `demo` model
    default_model: str | None = None  # default: the first model
    upscalers: list[UpscalerModel] = []  # beside the builtins Lanczos and Nearest
    upscaler: UpscalerConfig = msgspec.field(default_factory=UpscalerConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    projector: ProjectorConfig = msgspec.field(default_factory=ProjectorConfig)
    progress: ProgressConfig = msgspec.field(default_factory=ProgressConfig)
    notifier: NotifierConfig = msgspec.field(default_factory=NotifierConfig)
    client: ClientConfig = msgspec.field(default_factory=ClientConfig)
    fooocus: FooocusConfig = msgspec.field(default_factory=FooocusConfig)
    sdwm: SdWorkManagerConfig = msgspec.field(default_factory=SdWorkManagerConfig)
    quotas: QuotasConfig = msgspec.field(default_factory=QuotasConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    source: str | None = None  # the file this config came from (set by load)

    def __post_init__(self) -> None:
        if not self.models:
            self.models = [ModelConfig(name=DEMO_MODEL, width=64, height=64)]
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise msgspec.ValidationError("model names must be unique - at `$.models`")
        for m in self.models:
            if m.checkpoint is not None and m.path is not None:
                raise msgspec.ValidationError(
                    f"model {m.name!r}: a checkpoint takes `config` (a diffusers folder), not `path` - at `$.models`")
            if m.path is None and m.checkpoint is None and m.name != DEMO_MODEL:
                raise msgspec.ValidationError(f"model {m.name!r} needs a path or a checkpoint - at `$.models`")
        reserved = {"Latent", "Lanczos", "Nearest"}
        upscaler_names = [u.name for u in self.upscalers]
        if reserved & set(upscaler_names) or len(set(upscaler_names)) != len(upscaler_names):
            raise msgspec.ValidationError(f"upscaler names must be unique and not {sorted(reserved)} - at `$.upscalers`")
        for network in self.notifier.allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise msgspec.ValidationError(f"{network!r} is not a network - at `$.notifier.allowed_networks`") from None
        if self.storage.backend == "s3" and not (self.storage.endpoint and self.storage.access_key
                                                  and self.storage.secret_key):
            raise msgspec.ValidationError("the s3 backend needs endpoint, access_key and secret_key - at `$.storage`")
        if self.storage.presign_ttl > 7 * 86400:
            raise msgspec.ValidationError("presign_ttl is at most 7 days (604800 s) - at `$.storage`")
        if self.progress.preview_format not in ("webp", "jpeg"):
            raise msgspec.ValidationError("preview_format must be webp or jpeg - at `$.progress`")
        owners = [k.owner for k in self.api_keys]
        if len(set(owners)) != len(owners):
            raise msgspec.ValidationError("two API keys have one id (or one key is listed twice) - at `$.api.keys`")
        if self.default_model is None:
            self.default_model = names[0]
        elif self.default_model not in names:
            raise msgspec.ValidationError(
                f"default_model {self.default_model!r} is not one of {names} - at `$.default_model`")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def api_key_file(self) -> Path:
        """The key `diffbus up` generates when config names none."""
        return self.data_path / "api-key"

    @property
    def lora_path(self) -> Path:
        return Path(self.worker.lora_dir) if self.worker.lora_dir else self.data_path / "loras"

    @property
    def webhook_secret_file(self) -> Path:
        """The webhook signing secret `diffbus up` generates when config names none."""
        return self.data_path / "webhook-secret"

    @property
    def uses_demo_model(self) -> bool:
        return any(m.name == DEMO_MODEL and m.path is None and m.checkpoint is None for m in self.models)

    @property
    def api_keys(self) -> list[ApiKey]:
        return [k if isinstance(k, ApiKey) else ApiKey(key=k) for k in self.api.keys]

    @property
    def sdwm_owner(self) -> str:
        """The owner of sd_work_manager tasks: the API key whose id, else whose name, is sdwm.owner (the
        first of that name), else sdwm.owner itself behind a prefix no key id is given by default."""
        keys = self.api_keys
        found = next((k for k in keys if k.id == self.sdwm.owner), None) or next(
            (k for k in keys if k.name == self.sdwm.owner), None)
        return found.owner if found else f"sdwm:{self.sdwm.owner}"

    @property
    def public_base_url(self) -> str:
        """Where the API is reached from outside, for URLs made away from a request (webhooks)."""
        if self.api.public_base_url:
            return self.api.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.api.host in ("0.0.0.0", "::", "") else self.api.host
        return f"http://{host}:{self.api.port}"

    @property
    def upscaler_names(self) -> list[str]:
        return ["Lanczos", "Nearest", *(u.name for u in self.upscalers)]

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)
