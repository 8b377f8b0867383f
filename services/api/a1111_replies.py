"""The shapes of the AUTOMATIC1111 dialect's replies, for its OpenAPI description (a1111.py builds them)."""

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


class SdModel(msgspec.Struct):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class Sampler(msgspec.Struct):
    name: str
    aliases: list[str]
    options: dict


class ScheduleType(msgspec.Struct):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float | None
    need_inner_model: bool


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
