"""The shapes of the AUTOMATIC1111 dialect's replies, field by field as A1111 1.10's modules/api/models.py
declares them. The listings are served by encoding these Structs, so what is documented is what is sent."""

import msgspec


class A1111Error(msgspec.Struct):
    """A1111's error body; a 404 is only {"detail": "Not Found"}."""

    detail: str | list[dict]  # a message, or for 422 one {loc, msg, type} per field
    error: str | msgspec.UnsetType = msgspec.UNSET  # HTTPException | RequestValidationError
    body: str | msgspec.UnsetType = msgspec.UNSET
    errors: str | msgspec.UnsetType = msgspec.UNSET


class ImagesReply(msgspec.Struct):
    images: list[str]  # base64 PNGs
    parameters: dict  # the request as sent
    info: str  # JSON: seeds, infotexts, task_id, ...


class Info(msgspec.Struct):
    """The JSON text in an images reply's `info`: A1111 1.10's Processed.js(), field by field; and
    diffbus's `task_id` (the seed's extension) and `notes` (what ran differently from the request)."""

    prompt: str
    all_prompts: list[str]
    negative_prompt: str
    all_negative_prompts: list[str]
    seed: int
    all_seeds: list[int]
    subseed: int
    all_subseeds: list[int]
    subseed_strength: float
    width: int
    height: int
    sampler_name: str
    cfg_scale: float
    steps: int
    batch_size: int
    restore_faces: bool
    face_restoration_model: str | None
    sd_model_name: str
    sd_model_hash: str | None
    sd_vae_name: str | None
    sd_vae_hash: str | None
    seed_resize_from_w: int
    seed_resize_from_h: int
    denoising_strength: float | None
    extra_generation_params: dict
    index_of_first_image: int
    infotexts: list[str]
    styles: list[str]
    job_timestamp: str
    clip_skip: int
    is_using_inpainting_conditioning: bool
    version: str
    task_id: str
    notes: list[str]


class ProgressState(msgspec.Struct):
    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int
    task_id: str | msgspec.UnsetType = msgspec.UNSET


class ProgressReply(msgspec.Struct):
    progress: float  # 0-1
    eta_relative: float  # seconds
    state: ProgressState
    current_image: str | None  # base64 preview
    textinfo: str | None
    current_task: str | None = None  # the task in progress


class SdModel(msgspec.Struct):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None
    # diffbus's additions (A1111 clients read the fields above): the model family (sd1 | sdxl ...; None
    # until a worker serving it announced) and the size a request without one gets
    family: str | None = None
    width: int | None = None
    height: int | None = None


class Sampler(msgspec.Struct):
    name: str
    aliases: list[str]
    options: dict


class ScheduleType(msgspec.Struct):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float | None
    need_inner_model: bool | None


class Upscaler(msgspec.Struct):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class Lora(msgspec.Struct):
    name: str
    alias: str
    path: str
    metadata: dict


class ExtrasReply(msgspec.Struct):
    html_info: str
    image: str  # base64 PNG


class ExtrasBatchReply(msgspec.Struct):
    html_info: str
    images: list[str]  # base64 PNGs, in the order sent


class LatentUpscaleMode(msgspec.Struct):
    name: str


class SdVae(msgspec.Struct):
    """Also Forge's /sdapi/v1/sd-modules."""

    model_name: str
    filename: str


class Hypernetwork(msgspec.Struct):
    name: str
    path: str | None


class FaceRestorer(msgspec.Struct):
    name: str
    cmd_dir: str | None


class RealesrganModel(msgspec.Struct):
    name: str
    path: str | None
    scale: int | None


class PromptStyle(msgspec.Struct):
    name: str
    prompt: str | None
    negative_prompt: str | None


class Embeddings(msgspec.Struct):
    loaded: dict[str, dict]  # name -> {step, sd_checkpoint, sd_checkpoint_name, shape, vectors}
    skipped: dict[str, dict]


class Memory(msgspec.Struct):
    ram: dict  # {free, used, total} in bytes, or {error}
    cuda: dict  # {system, active, allocated, reserved, inactive, events}, or {error}


class ScriptsList(msgspec.Struct):
    txt2img: list[str]
    img2img: list[str]


class ScriptInfo(msgspec.Struct):
    name: str | None
    is_alwayson: bool | None
    is_img2img: bool | None
    args: list[dict]


class Extension(msgspec.Struct):
    name: str
    remote: str
    branch: str
    commit_hash: str
    version: str
    commit_date: int
    enabled: bool
