"""The parts of the config, one Struct per section of config.yaml (api, limits, worker, notifier, ...):
their fields, defaults and per-field limits. `root.Config` holds them all."""

import hashlib
from typing import Annotated, Literal

import msgspec

DEMO_MODEL = "demo"

Positive = Annotated[int, msgspec.Meta(gt=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(Exception):
    """The configuration is invalid; the message says where."""


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


Limit = Annotated[int, msgspec.Meta(ge=0)] | None  # None: no limit


class Quota(Section):
    """What one API key may ask of the service; beyond a limit a submit answers 429 with Retry-After."""

    max_queued: Limit = 1000  # its tasks waiting (pending)
    max_running: Limit = None  # its tasks running at once: a submit while this many run is refused
    per_minute: Limit = None  # submits accepted in any 60 seconds (counted by each API replica)
    weight: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # its share of the workers under fair sharing


class KeyQuota(Section):
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


class RetentionConfig(Section):
    days: Annotated[float, msgspec.Meta(ge=0)] = 30.0  # a task, its events and images go this long after it was made; 0: kept forever
    sweep_every_s: Seconds = 600.0  # how often the projector looks for expired tasks


class ApiKey(Section):
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


class ApiConfig(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    keys: list[str | ApiKey] = []
    key_header: str = "X-API-Key"
    public_base_url: str | None = None  # base of result URLs; default: the request's own origin
    max_body_bytes: Positive = 32 * 1024 * 1024
    query_timeout_s: Seconds = 5.0
    sync_timeout_s: Seconds = 600.0  # synchronous endpoints (A1111's txt2img) wait this long for a task


class Limits(Section):
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


class Defaults(Section):
    steps: Positive = 20
    guidance_scale: float = 7.5
    strength: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.75


class ModelConfig(Section):
    name: str
    path: str | None = None  # diffusers folder; None only for the built-in `demo` model or a checkpoint
    checkpoint: str | None = None  # a single-file .safetensors checkpoint (A1111 / original layout) ...
    config: str | None = None  # ... with a local diffusers folder of the same architecture for its configs
    #                             (default: diffbus's own SD 1.5 / SDXL base configs, worker.model_configs)
    width: Positive | None = None  # default size when a request names none; None: the family's native size
    height: Positive | None = None
    scheduler: str | None = None  # default scheduler class name; None: the model's own
    # None: told from the files (model_index.json, a checkpoint's tensor names); one module per family
    # in services/gpu_worker/families
    family: Literal["sd1", "sdxl", "sd3", "flux"] | None = None
    steps: Positive | None = None  # defaults a request without them gets; None: the family's (Flux schnell 4
    guidance_scale: Annotated[float, msgspec.Meta(ge=0)] | None = None  # steps, no guidance; dev 3.5), else `defaults`
    # SD3 / Flux: the transformer quantized as it loads, to fit smaller GPUs. nf4 (~6.7 GB for Flux dev)
    # and int8 through bitsandbytes (CUDA); fp8 as diffusers' layerwise casting (float8 storage, any device)
    quantize: Literal["nf4", "int8", "fp8"] | None = None
    vae: str | None = None  # another VAE (a diffusers folder or one .safetensors), e.g. an fp16-safe SDXL VAE


class UpscalerModel(Section):
    name: str  # e.g. "R-ESRGAN 4x+"
    path: str  # any model file spandrel recognises (.pth or .safetensors)


class UpscalerConfig(Section):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    tile_size: Positive = 512  # input pixels per tile side: memory stays flat for any image size
    tile_overlap: Annotated[int, msgspec.Meta(ge=0)] = 32  # blended between neighbouring tiles
    half: bool = True  # fp16 on CUDA where the architecture supports it
    concurrency: Positive = 8  # jobs in flight; the upscaling itself runs one at a time


class NatsConfig(Section):
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


class StorageConfig(Section):
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


class MetricsConfig(Section):
    """Prometheus: the API answers GET /metrics on its own port; other services on this port, when set."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None


class BatchingConfig(Section):
    """Dynamic batching: compatible waiting jobs run as one pipeline call."""

    enabled: bool | None = None  # None: on with CUDA, off on the CPU (where it gains little)
    max_images: Positive = 8  # images in one call
    max_wait_ms: Annotated[float, msgspec.Meta(ge=0)] = 20.0  # how long to wait for more jobs


class WorkerConfig(Section):
    models: list[str] = []  # models this worker serves; empty: every configured model
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # the pipelines' weights: auto is float16 on CUDA (bfloat16 for SD3 and Flux; an SDXL VAE whose config
    # says force_upcast decodes in float32, as diffusers does), float32 on the CPU; bfloat16 needs no upcast
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    ack_wait_s: Seconds = 30.0  # a job not heartbeated for this long goes to another worker
    max_deliver: Positive = 3  # attempts before a job ends failed
    retry_delay_s: Seconds = 2.0  # wait before a transiently failed job's next attempt, doubled per attempt
    retry_delay_max_s: Seconds = 60.0  # ... up to this
    announce_every_s: Seconds = 5.0
    # After a doorbell (a job published) the pull for it waits this long for the job to be stored (on a
    # cluster the bell rings before replication ends): the job goes to a worker already waiting at the server.
    pull_after_ring_s: Seconds = 0.25
    max_loaded_models: Positive = 2  # pipelines kept loaded; the least recently used goes first
    max_loaded_gb: Annotated[float, msgspec.Meta(gt=0)] | None = None  # and their weights' size
    lora_dir: str | None = None  # LoRA files (.safetensors); default: data_dir/loras
    # configs for single-file checkpoints named without `config:`: a folder of diffusers config folders by
    # family (sd1/, sdxl/; JSON only, CLIP tokenizers made locally); default: the ones diffbus ships
    model_configs: str | None = None
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


class ProgressConfig(Section):
    min_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 0.1  # progress messages at most this often
    preview_every: Annotated[int, msgspec.Meta(ge=0)] = 5  # a latent preview every N steps; 0: none
    preview_format: str = "webp"  # webp | jpeg
    preview_size: Positive = 256  # longest side of a preview, at most the image's own


class ClientConfig(Section):
    """For `diffbus generate` (also DIFFBUS_CLIENT__URL, DIFFBUS_CLIENT__API_KEY)."""

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None  # default: data_dir/api-key when it exists


class NotifierConfig(Section):
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


class ProjectorConfig(Section):
    db: str = "tasks.db"  # relative to data_dir; ":memory:" rebuilds from the stream at every start
    # SQLite's page cache: hold the indexes (about 130 MB a million tasks), or rebuilds slow on random inserts
    cache_mb: Positive = 256


class FooocusConfig(Section):
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


class SdWorkManagerConfig(Section):
    """The sd_work_manager dialect (/api/Task/*). Its one shared secret stands for one owner."""

    secret: str | None = None  # X-API-SECRET (the original's webApiSecret); None: the dialect refuses all
    owner: str = "sd-work-manager"  # whose tasks it submits and reads: an API key's id or name shares them
    error_http_status: bool = True  # 4xx/5xx on errors; False: always 200 with `code`, as the original
