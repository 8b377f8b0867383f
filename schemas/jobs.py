"""JobSpec: what a job asks a worker to do, fully resolved by the API (defaults filled in, seed chosen,
input images replaced by storage keys). The `accepted` event carries it for audit and replay."""

from enum import StrEnum

import msgspec

from .subjects import Priority

SCHEMA_VERSION = 1

# Scheduler class names a request may name (diffusers class names).
SCHEDULERS = (
    "DPMSolverMultistepScheduler",
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
)


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value


class GenerationSpec(msgspec.Struct, kw_only=True, tag_field="kind"):
    model: str
    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    num_images: int = 1
    steps: int
    guidance_scale: float
    scheduler: str | None = None  # None: the model's own scheduler
    seed: int  # image i uses seed + i
    output_format: OutputFormat = OutputFormat.PNG

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]


class Txt2Img(GenerationSpec, tag="txt2img"):
    pass


class Img2Img(GenerationSpec, tag="img2img"):
    init_image: str  # storage key
    strength: float


JobSpec = Txt2Img | Img2Img


class Job(msgspec.Struct, kw_only=True):
    """A message on the JOBS stream."""

    task_id: str
    spec: JobSpec
    priority: Priority = Priority.NORMAL
    schema_version: int = SCHEMA_VERSION
