"""JobSpec: what a job asks a worker to do, fully resolved by the API (defaults filled in, seed chosen,
input images replaced by storage keys). The `accepted` event carries it for audit and replay."""

from enum import StrEnum

import msgspec

from . import subjects
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
    "DPMSolverSinglestepScheduler",
    "LCMScheduler",
    "FlowMatchEulerDiscreteScheduler",  # flow-matching models (SD3, Flux)
    "FlowMatchHeunDiscreteScheduler",
    "FlowMatchLCMScheduler",
)


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value


class LoraRef(msgspec.Struct, frozen=True):
    name: str  # file stem in the worker's LoRA folder
    weight: float
    sha256: str  # of the file, as the API saw it: recorded in the image's parameters


class GenerationSpec(msgspec.Struct, kw_only=True, tag_field="kind"):
    model: str
    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    num_images: int = 1
    steps: int
    guidance_scale: float  # classifier-free guidance; for Flux dev, its distilled guidance
    true_cfg_scale: float | None = None  # Flux: real CFG with the negative prompt (above 1; twice the work)
    scheduler: str | None = None  # None: the model's own scheduler
    scheduler_options: dict[str, bool | str] = {}  # e.g. use_karras_sigmas, algorithm_type
    seed: int  # image i uses seed + i (unless seed_increment is off)
    output_format: OutputFormat = OutputFormat.PNG
    quality: int = 95  # JPEG and WebP
    loras: list[LoraRef] = []
    seed_increment: bool = True  # False: every image uses `seed` (Fooocus's disable_seed_increment)
    metadata: str | None = "a1111"  # parameters written into each image: a1111 | fooocus | None
    model_hash: str | None = None  # A1111's short hash of a single-file checkpoint (10 hex digits of its sha256)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i * self.seed_increment for i in range(self.num_images)]


LATENT_UPSCALER = "Latent"  # hires fix by upscaling latents inside the gpu worker
BUILTIN_UPSCALERS = ("Lanczos", "Nearest")  # need no model file


class HiresFix(msgspec.Struct, kw_only=True):
    """A second, img2img pass over the upscaled first image (A1111's hires fix)."""

    scale: float
    upscaler: str  # LATENT_UPSCALER, a builtin, or a configured model name
    steps: int  # second-pass steps
    denoising_strength: float
    width: int  # final size
    height: int


class Txt2Img(GenerationSpec, tag="txt2img"):
    hires: HiresFix | None = None


class Img2Img(GenerationSpec, tag="img2img"):
    init_image: str  # storage key
    strength: float
    # sd_work_manager's several initial images (same size): one image from each, num_images in all
    more_init_images: list[str] = []


class Outpaint(msgspec.Struct, frozen=True):
    """Pixels added on each side of the input."""

    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0


class InpaintFill(StrEnum):
    """What the masked area starts from (A1111's inpainting_fill)."""

    ORIGINAL = "original"
    LATENT_NOISE = "latent_noise"  # pure noise: the input under the mask is ignored
    LATENT_NOTHING = "latent_nothing"  # a flat grey: zeroed latents


class Inpaint(GenerationSpec, tag="inpaint"):
    """Repaint the white of `mask_image` (or, for outpaint, the added margins). width/height are the
    output's: the input's size plus any outpaint margins."""

    init_image: str  # storage key
    mask_image: str | None = None  # storage key; None with outpaint
    strength: float = 0.75
    mask_blur: int = 4  # feathers the mask inwards: pixels outside it are never changed
    inpainting_fill: InpaintFill = InpaintFill.ORIGINAL
    inpaint_full_res: bool = False  # generate a crop around the mask at full size, paste it back
    inpaint_full_res_padding: int = 32
    invert_mask: bool = False
    outpaint: Outpaint | None = None


class Upscale(msgspec.Struct, kw_only=True, tag_field="kind", tag="upscale"):
    image: str  # storage key
    scale: float
    upscaler: str
    width: int  # output size: round(input size × scale)
    height: int
    output_format: OutputFormat = OutputFormat.PNG
    quality: int = 95


JobSpec = Txt2Img | Img2Img | Inpaint | Upscale


UPSCALE_QUEUE = "@upscale"  # the queue name of upscale tasks, beside model names


def queue_name(spec: "JobSpec") -> str:
    """Which queue a task waits in: its model's, or the upscalers'."""
    return UPSCALE_QUEUE if isinstance(spec, Upscale) else spec.model


class Stage(msgspec.Struct, frozen=True):
    name: str  # generate | upscale | refine
    weight: float  # share of the task's progress


def stages(spec: JobSpec) -> list[Stage]:
    """The stages a task runs, in order; a hires fix with a model upscaler crosses to the upscaler
    service and back. Weights make one progress fraction across all of them."""
    if isinstance(spec, Upscale):
        return [Stage("upscale", 1.0)]
    base = Stage("generate", spec.steps * getattr(spec, "strength", 1.0))
    hires = getattr(spec, "hires", None)
    if hires is None:
        return [base]
    refine = Stage("refine", max(1, int(hires.steps * hires.denoising_strength)))
    if hires.upscaler == LATENT_UPSCALER:
        return [base, refine]
    return [base, Stage("upscale", max(1.0, 0.2 * (base.weight + refine.weight))), refine]


def stage_span(spec: JobSpec, index: int) -> tuple[float, float]:
    """The part [start, end) of the task's progress that stage `index` covers."""
    weights = [stage.weight for stage in stages(spec)]
    total = sum(weights)
    return sum(weights[:index]) / total, sum(weights[: index + 1]) / total


class Job(msgspec.Struct, kw_only=True):
    """A message on the JOBS stream: a task's spec and which of its stages to run."""

    task_id: str
    spec: JobSpec
    priority: Priority = Priority.NORMAL
    stage: int = 0  # index into stages(spec)
    inputs: list[str] = []  # storage keys of the images the stage starts from (later stages)
    key: str | None = None  # fair sharing: the owner's subject token (subjects.key_token); None: off
    schema_version: int = SCHEMA_VERSION

    @property
    def stage_name(self) -> str:
        return stages(self.spec)[self.stage].name

    @property
    def last_stage(self) -> bool:
        return self.stage == len(stages(self.spec)) - 1


def job_subject(job: Job) -> str:
    """Where a job is queued: its stage's worker kind, its priority, and for generation its model (and,
    with fair sharing, its key)."""
    if stages(job.spec)[job.stage].name == "upscale":
        return subjects.upscale_job(job.priority)
    subject = subjects.generate_job(job.priority, job.spec.model)
    return subject if job.key is None else subjects.keyed(subject, job.key)


def batch_key(job: Job) -> tuple | None:
    """Jobs with equal keys can run as one pipeline call (dynamic batching); None: never batched."""
    spec = job.spec
    if not isinstance(spec, Txt2Img) or spec.hires is not None or job.stage != 0:
        return None
    # true CFG (Flux) runs for a batch with a negative prompt in it: only jobs alike in both batch together
    true_cfg = (spec.true_cfg_scale, bool(spec.negative_prompt.strip())) if spec.true_cfg_scale else None
    return (spec.model, spec.width, spec.height, spec.steps, spec.scheduler, spec.guidance_scale,
            tuple(spec.loras), true_cfg)
