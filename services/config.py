"""Typed config: config.yaml, then DIFFBUS_* environment variables, validated once at start.

Environment overrides use `__` between levels: DIFFBUS_API__PORT=8001, DIFFBUS_NATS__URL=nats://h:4222.
Values are parsed as YAML, so numbers, booleans and lists work.
"""

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

ENV_PREFIX = "DIFFBUS_"
DEMO_MODEL = "demo"

Positive = Annotated[int, msgspec.Meta(gt=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(Exception):
    """The configuration is invalid; the message says where."""


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


Limit = Annotated[int, msgspec.Meta(ge=0)] | None  # None: no limit


class Quota(_Section):
    """What one API key may ask of the service; beyond a limit a submit answers 429 with Retry-After."""

    max_queued: Limit = 1000  # its tasks waiting (pending)
    max_running: Limit = None  # its tasks running at once: a submit while this many run is refused
    per_minute: Limit = None  # submits accepted in any 60 seconds (counted by each API replica)
    weight: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # its share of the workers under fair sharing


class KeyQuota(_Section):
    """A key's own quota: the fields it names replace the defaults (`quotas`), null meaning no limit."""

    max_queued: Limit | msgspec.UnsetType = msgspec.UNSET
    max_running: Limit | msgspec.UnsetType = msgspec.UNSET
    per_minute: Limit | msgspec.UnsetType = msgspec.UNSET
    weight: Annotated[float, msgspec.Meta(gt=0)] | msgspec.UnsetType = msgspec.UNSET

    def over(self, defaults: Quota) -> Quota:
        return msgspec.structs.replace(defaults, **{f: v for f in self.__struct_fields__
                                                    if (v := getattr(self, f)) is not msgspec.UNSET})


class QuotasConfig(Quota):
    """The quota of every key that names none of its own. Admin keys have none."""

    retry_after_s: Positive = 10  # Retry-After of a refusal for max_queued or max_running
    # Within a priority, workers serve the keys waiting for a model in turn, weighted by `weight`,
    # instead of first come first served. Set it alike for the API and the gpu workers.
    fair_sharing: bool = True


class RetentionConfig(_Section):
    days: Annotated[float, msgspec.Meta(ge=0)] = 30.0  # a task, its events and images go this long after it was made; 0: kept forever
    sweep_every_s: Seconds = 600.0  # how often the projector looks for expired tasks


class ApiKey(_Section):
    key: Annotated[str, msgspec.Meta(min_length=8)]
    name: str | None = None  # a display name (any Unicode); it never identifies the owner
    id: str | None = None  # the owner recorded with tasks; default derived from the key (set it to keep
    # a key's tasks when the key is replaced, or, upgrading, to the name older versions recorded)
    admin: bool = False  # sees every key's tasks; no quota
    webhook_secret: str | None = None  # whsec_…: signs this key's webhooks instead of notifier.secret
    quota: KeyQuota = msgspec.field(default_factory=KeyQuota)

    @property
    def owner(self) -> str:
        """The owner recorded with tasks: the configured id, else a digest (never the key, nor the name:
        two keys are two owners whatever they are called)."""
        return self.id or "key-" + hashlib.sha256(self.key.encode()).hexdigest()[:16]


class ApiConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    keys: list[str | ApiKey] = []
    key_header: str = "X-API-Key"
    public_base_url: str | None = None  # base of result URLs; default: the request's own origin
    max_body_bytes: Positive = 32 * 1024 * 1024
    query_timeout_s: Seconds = 5.0
    sync_timeout_s: Seconds = 600.0  # synchronous endpoints (A1111's txt2img) wait this long for a task


class Limits(_Section):
    """Every request limit, checked at the edge."""

    max_width: Positive = 2048
    max_height: Positive = 2048
    min_size: Positive = 64
    max_steps: Positive = 150
    max_images: Annotated[int, msgspec.Meta(ge=1, le=10)] = 10
    max_prompt_chars: Positive = 10_000
    max_init_image_bytes: Positive = 16 * 1024 * 1024
    max_input_pixels: Positive = 2048 * 2048  # of an input image, read from its header before decoding
    max_json_depth: Annotated[int, msgspec.Meta(ge=2, le=200)] = 32  # nesting of a request body
    max_guidance_scale: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    max_upscale_side: Positive = 8192  # longest side of an upscaled image
    max_upscale_scale: Annotated[float, msgspec.Meta(ge=1)] = 8.0


class Defaults(_Section):
    steps: Positive = 20
    guidance_scale: float = 7.5
    strength: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.75


class ModelConfig(_Section):
    name: str
    path: str | None = None  # diffusers folder; None only for the built-in `demo` model or a checkpoint
    checkpoint: str | None = None  # a single-file .safetensors checkpoint (A1111 / original layout) ...
    config: str | None = None  # ... with a local diffusers folder of the same architecture for its configs
    width: Positive | None = None  # default size when a request names none; None: the family's native size
    height: Positive | None = None
    scheduler: str | None = None  # default scheduler class name; None: the model's own
    # None: told from the files (model_index.json, a checkpoint's tensor names); one module per family
    # in services/gpu_worker/families
    family: Literal["sd1", "sdxl"] | None = None
    vae: str | None = None  # another VAE (a diffusers folder or one .safetensors), e.g. an fp16-safe SDXL VAE


class UpscalerModel(_Section):
    name: str  # e.g. "R-ESRGAN 4x+"
    path: str  # any model file spandrel recognises (.pth or .safetensors)


class UpscalerConfig(_Section):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tile_size: Positive = 512  # input pixels per tile side: memory stays flat for any image size
    tile_overlap: Annotated[int, msgspec.Meta(ge=0)] = 32  # blended between neighbouring tiles
    half: bool = True  # fp16 on CUDA where the architecture supports it
    concurrency: Positive = 8  # jobs in flight; the upscaling itself runs one at a time


class NatsConfig(_Section):
    url: str = "nats://127.0.0.1:4222"
    servers: list[str] = []  # a cluster: several URLs (the client fails over between them); default [url]
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None  # a .creds file (JWT + nkey seed)
    tls_ca: str | None = None  # CA bundle to verify the servers with (implies TLS)
    tls_cert: str | None = None  # client certificate and key, when the servers ask for one
    tls_key: str | None = None
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1  # of every stream and bucket: 3 in a cluster

    @property
    def urls(self) -> list[str]:
        return list(self.servers) or [self.url]


class StorageConfig(_Section):
    """Where images live: the JetStream object store (`nats`, nothing else to run) or S3 (`s3`)."""

    backend: Literal["nats", "s3"] = "nats"
    endpoint: str | None = None  # host:port, or a URL whose scheme sets `secure`
    access_key: str | None = None
    secret_key: str | None = None
    bucket: str = "diffbus"  # created when missing
    secure: bool = True  # https
    region: str = "us-east-1"
    public_base_url: str | None = None  # result URLs are <this>/<key> (a public bucket or CDN) ...
    presign_ttl: Seconds = 7 * 86400  # ... else presigned GET URLs valid this many seconds (S3 allows 7 days)
    # Presigned URLs name the host they were signed for: when clients reach the store at another
    # address than the services do (http://minio:9000 inside compose), sign for this one.
    public_endpoint: str | None = None


class MetricsConfig(_Section):
    """Prometheus: the API answers GET /metrics on its own port; other services on this port, when set."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None


class BatchingConfig(_Section):
    """Dynamic batching: compatible waiting jobs run as one pipeline call."""

    enabled: bool | None = None  # None: on with CUDA, off on the CPU (where it gains little)
    max_images: Positive = 8  # images in one call
    max_wait_ms: Annotated[float, msgspec.Meta(ge=0)] = 20.0  # how long to wait for more jobs


class WorkerConfig(_Section):
    models: list[str] = []  # models this worker serves; empty: every configured model
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    ack_wait_s: Seconds = 30.0  # a job not heartbeated for this long goes to another worker
    max_deliver: Positive = 3  # attempts before a job ends failed
    retry_delay_s: Seconds = 2.0  # wait before a transiently failed job's next attempt, doubled per attempt
    retry_delay_max_s: Seconds = 60.0  # ... up to this
    announce_every_s: Seconds = 5.0
    max_loaded_models: Positive = 2  # pipelines kept loaded; the least recently used goes first
    max_loaded_gb: Annotated[float, msgspec.Meta(gt=0)] | None = None  # and their weights' size
    lora_dir: str | None = None  # LoRA files (.safetensors); default: data_dir/loras
    batching: BatchingConfig = msgspec.field(default_factory=BatchingConfig)
    # Settings that decide GPU speed, applied when a model loads (gpu_worker/speed.py; bench/gpu.py
    # measures each on and off):
    compile: bool = False  # torch.compile the denoiser (UNet or transformer): slow first calls, then faster
    channels_last: bool = False  # channels-last memory format for the denoiser's and VAE's convolutions
    fuse_qkv: bool = False  # one matmul for each attention's query, key and value projections
    attention: Literal["sdpa", "classic"] = "sdpa"  # classic: explicit matmul-softmax-matmul, no fused kernel
    vae_decode: Literal["batch", "per_image"] = "batch"  # per_image: VAE slicing, less memory, slower

    # CUDA memory: none keeps every model on the GPU; model moves each part (UNet, text encoders, VAE) to
    # the GPU while it runs; sequential moves layer by layer (slowest, for GPUs far smaller than the model)
    offload: Literal["none", "model", "sequential"] = "none"
    vae_tiling: bool = False  # decode large images tile by tile (flat VAE memory, faint seams possible)

    def __post_init__(self) -> None:
        if self.fuse_qkv and self.attention == "classic":
            raise ValueError("worker.fuse_qkv needs worker.attention: sdpa (fused projections use SDPA)")


class ProgressConfig(_Section):
    min_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 0.1  # progress messages at most this often
    preview_every: Annotated[int, msgspec.Meta(ge=0)] = 5  # a latent preview every N steps; 0: none
    preview_format: str = "webp"  # webp | jpeg
    preview_size: Positive = 256  # longest side of a preview, at most the image's own


class ClientConfig(_Section):
    """For `diffbus generate` (also DIFFBUS_CLIENT__URL, DIFFBUS_CLIENT__API_KEY)."""

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None  # default: data_dir/api-key when it exists


class NotifierConfig(_Section):
    secret: str | None = None  # whsec_…; default: data_dir/webhook-secret, created by `diffbus up`
    timeout_s: Seconds = 10.0
    # Waits before each retry of a terminal event (jittered ±20 %); about an hour in all.
    retry_schedule_s: list[Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(
        default_factory=lambda: [5, 30, 120, 300, 600, 1200, 1800])
    progress_min_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    max_in_flight: Positive = 64  # deliveries at once per notifier
    # Webhook targets in private, loopback, link-local or metadata addresses are refused unless
    # they fall in one of these networks (e.g. ["127.0.0.0/8"] on one machine, ["10.0.0.0/8"]).
    allowed_networks: list[str] = []


class ProjectorConfig(_Section):
    db: str = "tasks.db"  # relative to data_dir; ":memory:" rebuilds from the stream at every start


class FooocusConfig(_Section):
    """The FooocusAPI dialect (/v1/engine/generate/, /tasks)."""

    # Fooocus styles: a JSON list of {name, prompt, negative_prompt}, `{prompt}` marking where the
    # request's prompt goes. Default: the small set shipped in services/api/fooocus_styles.json.
    styles_file: str | None = None
    default_styles: list[str] = []  # applied when a request names none
    upscaler: str | None = None  # for uov "Upscale (…)": default the first configured model, else Lanczos
    # A synchronous request (neither async_process nor stream_output, no image type in Accept):
    # "binary" answers the image itself (the seed document), "json" the finished task object (newer FooocusAPI).
    sync_reply: Literal["binary", "json"] = "binary"
    # Input images given as http(s) URLs are fetched by the API, with the webhook targets' address rules
    # (notifier.allowed_networks), within this time and at most limits.max_init_image_bytes.
    image_fetch_timeout_s: Seconds = 10.0


class SdWorkManagerConfig(_Section):
    """The sd_work_manager dialect (/api/Task/*). Its one shared secret stands for one owner."""

    secret: str | None = None  # X-API-SECRET (the original's webApiSecret); None: the dialect refuses all
    owner: str = "sd-work-manager"  # whose tasks it submits and reads: an API key's id or name shares them
    error_http_status: bool = True  # 4xx/5xx on errors; False: always 200 with `code`, as the original


class Config(_Section):
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
            if m.checkpoint is not None and (m.config is None or m.path is not None):
                raise msgspec.ValidationError(
                    f"model {m.name!r}: a checkpoint needs `config` (a local diffusers folder) and no `path` - at `$.models`")
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


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = tree.get(part)
        if not isinstance(node, dict):
            node = tree[part] = {}
        tree = node
    tree[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            path = name[len(ENV_PREFIX):].lower().split("__")
            _set_path(tree, path, yaml.safe_load(raw) if raw else None)
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _seed_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """sd_work_manager's own config keys, accepted so its config.yaml works as it is."""
    raw = dict(raw)
    for key, path in (("webApiListenHost", ["api", "host"]), ("webApiListenPort", ["api", "port"]),
                      ("webApiSecret", ["sdwm", "secret"])):
        if key in raw:
            _set_path(raw, path, raw.pop(key))
    if "storageDBUrl" in raw:  # sqlite::memory: or sqlite:<path>
        url = str(raw.pop("storageDBUrl"))
        if not url.startswith("sqlite:"):
            raise ConfigError(f"storageDBUrl {url!r}: only sqlite: URLs are supported")
        _set_path(raw, ["projector", "db"], url.removeprefix("sqlite:").removeprefix("//") or ":memory:")
    return raw


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
         **overrides: Any) -> Config:
    """Build the Config from a YAML file (optional), DIFFBUS_* variables and keyword overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    if "tasks_max_age_days" in raw:  # its name before retention.days
        _set_path(raw, ["retention", "days"], raw.pop("tasks_max_age_days"))
    raw = _merge(_seed_keys(raw), env_overrides(os.environ if environ is None else environ))
    raw = _merge(raw, overrides)
    if path is not None:
        raw["source"] = str(path)
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from e
