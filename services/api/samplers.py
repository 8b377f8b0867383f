"""AUTOMATIC1111 sampler and schedule-type names as diffusers scheduler classes and options.

A1111 (1.10, modules/sd_schedulers.py) resolves a schedule type by its name or its label and runs an
unknown one, or one its sampler cannot use, with the sampler's default schedule. diffbus does the same,
and says so in the reply's `info` (`notes`)."""

from dataclasses import dataclass, field

from .errors import ApiError

# name -> (diffusers class, options, aliases)
SAMPLERS: dict[str, tuple[str, dict, list[str]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}, ["k_dpmpp_2m"]),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++"}, ["k_dpmpp_sde"]),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, ["k_dpmpp_2m_sde"]),
    "DPM++ 2S a": ("DPMSolverSinglestepScheduler", {}, ["k_dpmpp_2s_a"]),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, ["k_euler_a", "k_euler_ancestral"]),
    "Euler": ("EulerDiscreteScheduler", {}, ["k_euler"]),
    "LMS": ("LMSDiscreteScheduler", {}, ["k_lms"]),
    "Heun": ("HeunDiscreteScheduler", {}, ["k_heun"]),
    "DPM2": ("KDPM2DiscreteScheduler", {}, ["k_dpm_2"]),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}, ["k_dpm_2_a"]),
    "DDIM": ("DDIMScheduler", {}, ["ddim"]),
    "PLMS": ("PNDMScheduler", {}, ["plms"]),
    "UniPC": ("UniPCMultistepScheduler", {}, ["unipc"]),
    "LCM": ("LCMScheduler", {}, ["k_lcm"]),
}
UNSUPPORTED = {"DPM fast", "DPM adaptive"}  # no diffusers equivalent


@dataclass(frozen=True)
class ScheduleType:
    """One of A1111's schedule types; `options` None: diffusers has no equivalent."""

    name: str
    label: str
    options: dict | None
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list[str] | None = None


# A1111 1.10's list, in its order. Sigma options exist only on the k-diffusion style classes (below).
SCHEDULE_TYPES = [
    ScheduleType("automatic", "Automatic", {}),
    ScheduleType("uniform", "Uniform", {}, need_inner_model=True),
    ScheduleType("karras", "Karras", {"use_karras_sigmas": True}, default_rho=7.0),
    ScheduleType("exponential", "Exponential", {"use_exponential_sigmas": True}),
    ScheduleType("polyexponential", "Polyexponential", None, default_rho=1.0),
    ScheduleType("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}, need_inner_model=True,
                 aliases=["SGMUniform"]),
    ScheduleType("kl_optimal", "KL Optimal", None),
    ScheduleType("align_your_steps", "Align Your Steps", None),
    ScheduleType("simple", "Simple", None, need_inner_model=True),
    ScheduleType("normal", "Normal", {"timestep_spacing": "linspace"}, need_inner_model=True),
    ScheduleType("ddim", "DDIM", {"timestep_spacing": "leading"}, need_inner_model=True),
    ScheduleType("beta", "Beta", {"use_beta_sigmas": True}, need_inner_model=True),
]
BY_KEY = {key: s for s in SCHEDULE_TYPES for key in (s.name, s.label, *(s.aliases or []))}
SIGMA_OPTIONS = {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"}
# diffusers classes whose constructor takes the sigma options (checked against diffusers in the tests)
TAKES_SIGMAS = {"DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler",
                "LMSDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                "KDPM2AncestralDiscreteScheduler", "UniPCMultistepScheduler"}
TAKES_SPACING = {cls for cls, _, _ in SAMPLERS.values()} - {"DPMSolverSinglestepScheduler"}
OLD_SUFFIXES = ("Karras", "Exponential", "SGM Uniform")  # "DPM++ 2M Karras": sampler and schedule in one name


@dataclass
class Resolution:
    scheduler: str | None  # diffusers class; None: the model's own
    options: dict = field(default_factory=dict)
    sampler: str | None = None  # the A1111 sampler name
    schedule: str = "Automatic"  # the label of the schedule type used
    notes: list[str] = field(default_factory=list)


def schedule_type(key: str | None) -> ScheduleType | None:
    """A1111's lookup: name or label (and, leniently, either in another case)."""
    if not key:
        return BY_KEY["automatic"]
    found = BY_KEY.get(key)
    if found is None:
        found = next((s for k, s in BY_KEY.items() if k.lower() == key.lower()), None)
    return found


def _options_for(cls: str, schedule: ScheduleType) -> dict | None:
    """The schedule's options if `cls` takes them all, else None."""
    options = schedule.options or {}
    if SIGMA_OPTIONS & set(options) and cls not in TAKES_SIGMAS:
        return None
    if "timestep_spacing" in options and cls not in TAKES_SPACING:
        return None
    return options


def resolve(sampler: str | None, schedule: str | None, field: str = "sampler_name") -> Resolution:
    """The diffusers scheduler for an A1111 sampler and schedule type (old names such as
    "DPM++ 2M Karras" too). An unknown sampler is a 422; a schedule type diffusers cannot run with
    that sampler falls back to the sampler's default, with a note."""
    if not sampler:
        notes = [f"schedule type {schedule!r} applies to a named sampler only"] if schedule and \
            schedule_type(schedule) is not BY_KEY["automatic"] else []
        return Resolution(None, notes=notes)
    for suffix in OLD_SUFFIXES:
        if sampler.endswith(" " + suffix) and sampler[: -len(suffix) - 1] in SAMPLERS:
            sampler, schedule = sampler[: -len(suffix) - 1], schedule or suffix
            if schedule_type(schedule) is BY_KEY["automatic"]:
                schedule = suffix
    name = next((n for n, (_, _, aliases) in SAMPLERS.items() if sampler == n or sampler in aliases), None)
    if name is None:
        reason = "is not supported by diffusers" if sampler in UNSUPPORTED else "is unknown"
        raise ApiError(422, [{"loc": ["body", field], "msg": f"sampler {sampler!r} {reason}",
                              "type": "value_error"}])
    cls, base, _ = SAMPLERS[name]
    found = schedule_type(schedule)
    notes = []
    if found is None:
        notes.append(f"unknown schedule type {schedule!r}: used Automatic")
        found = BY_KEY["automatic"]
    options = _options_for(cls, found) if found.options is not None else None
    if options is None:
        why = "has no diffusers equivalent" if found.options is None else f"does not apply to {name}"
        notes.append(f"schedule type {found.label!r} {why}: used Automatic")
        found, options = BY_KEY["automatic"], {}
    return Resolution(cls, {**base, **options}, name, found.label, notes)


def usable_schedule_types() -> list[ScheduleType]:
    """The schedule types that change what is generated (the rest fall back to Automatic)."""
    return [s for s in SCHEDULE_TYPES if s.options is not None]


def listing() -> list[dict]:
    """GET /sdapi/v1/samplers."""
    return [{"name": name, "aliases": aliases, "options": {}} for name, (_, _, aliases) in SAMPLERS.items()]


# What the sampler names mean on flow-matching models (SD3, Flux): the worker runs DPM-Solver and UniPC
# on flow sigmas with the model's shift. name -> (diffusers class, options, the families it runs on)
FLOW_SAMPLERS: dict[str, tuple[str, dict, set[str] | None]] = {
    "Euler": ("FlowMatchEulerDiscreteScheduler", {}, None),
    "Euler a": ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}, None),
    "Heun": ("FlowMatchHeunDiscreteScheduler", {}, {"sd3"}),  # Flux's pipeline hands it sigmas it cannot take
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}, None),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, None),
    "UniPC": ("UniPCMultistepScheduler", {}, None),
    "LCM": ("FlowMatchLCMScheduler", {}, None),
}
FLOW_CAPABLE = {"DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler"}
FLOW_SIGMAS = {"FlowMatchEulerDiscreteScheduler"}  # flow classes that take the Karras/exponential/beta options


class Refused(ValueError):
    """A sampler the model's family cannot run (the request layer answers 422 naming the dialect's field)."""


def for_model(chosen: Resolution, info) -> Resolution:
    """`chosen` as the model a worker announced (`info`, a schemas.workers.ModelInfo) runs it: on a
    flow-matching model the sampler's flow-matching equivalent; Refused naming sampler and family."""
    if info is None or not info.flow_matching or chosen.sampler is None:
        return chosen
    found = FLOW_SAMPLERS.get(chosen.sampler)
    if found is None or (found[2] is not None and info.family not in found[2]):
        usable = [n for n, (_, _, families) in FLOW_SAMPLERS.items() if families is None or info.family in families]
        raise Refused(f"sampler {chosen.sampler!r} has no flow-matching equivalent for {info.family} models; "
                      f"use one of {usable}")
    cls, options, _ = found
    schedule, notes = BY_KEY.get(chosen.schedule, BY_KEY["automatic"]), list(chosen.notes)
    extra = schedule.options or {}
    if extra and not (cls in FLOW_SIGMAS and set(extra) <= SIGMA_OPTIONS):
        notes.append(f"schedule type {schedule.label!r} does not apply to {chosen.sampler} on {info.family}: "
                     "used Automatic")
        schedule, extra = BY_KEY["automatic"], {}
    return Resolution(cls, {**options, **extra}, chosen.sampler, schedule.label, notes)


def class_refusal(cls: str | None, info) -> str | None:
    """Why a diffusers scheduler class cannot sample this model (flow-matching or not), or None."""
    if cls is None or info is None:
        return None
    flow = cls.startswith("FlowMatch")
    if info.flow_matching and not (flow or cls in FLOW_CAPABLE):
        return f"{cls} is not a flow-matching scheduler; {info.family} models need FlowMatch* or {sorted(FLOW_CAPABLE)}"
    if flow and not info.flow_matching:
        return f"{cls} is for flow-matching models (SD3, Flux); this model is {info.family}"
    return None
