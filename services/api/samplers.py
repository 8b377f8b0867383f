"""AUTOMATIC1111 sampler and schedule-type names as diffusers scheduler classes and options."""

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
SCHEDULE_TYPES: dict[str, dict] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}


def resolve(sampler: str | None, schedule: str | None, field: str = "sampler_name") -> tuple[str | None, dict]:
    """(diffusers class, options) for an A1111 sampler (old names such as "DPM++ 2M Karras" too). An
    unknown schedule type is refused with or without a sampler."""
    schedule = schedule_type(schedule)
    if not sampler:
        return None, {}
    for suffix in ("Karras", "Exponential", "SGM Uniform"):
        if sampler.endswith(" " + suffix) and sampler[: -len(suffix) - 1] in SAMPLERS:
            sampler, schedule = sampler[: -len(suffix) - 1], schedule or suffix
    name = next((n for n, (_, _, aliases) in SAMPLERS.items() if sampler == n or sampler in aliases), None)
    if name is None:
        reason = "is not supported by diffusers" if sampler in UNSUPPORTED else "is unknown"
        raise ApiError(422, [{"loc": ["body", field], "msg": f"sampler {sampler!r} {reason}",
                              "type": "value_error"}])
    cls, options, _ = SAMPLERS[name]
    return cls, {**options, **SCHEDULE_TYPES.get(schedule or "Automatic", {})}


def schedule_type(schedule: str | None) -> str | None:
    """A schedule type by label ("SGM Uniform") or name ("sgm_uniform"); 422 when unknown."""
    if not schedule:
        return None
    wanted = schedule.strip().lower().replace(" ", "_")
    found = next((label for label in SCHEDULE_TYPES if label.lower().replace(" ", "_") == wanted), None)
    if found is None:
        raise ApiError(422, [{"loc": ["body", "scheduler"], "msg": f"unknown schedule type {schedule!r}",
                              "type": "value_error"}])
    return found


def listing() -> list[dict]:
    """GET /sdapi/v1/samplers."""
    return [{"name": name, "aliases": aliases, "options": {}} for name, (_, _, aliases) in SAMPLERS.items()]
