"""A1111 sampler and schedule-type names → diffusers schedulers, without a server."""

import inspect

import diffusers
import pytest

from services.api import samplers
from services.api.errors import ApiError


@pytest.mark.parametrize("sampler, schedule, cls, options, label", [
    ("Euler a", "automatic", "EulerAncestralDiscreteScheduler", {}, "Automatic"),  # webuiapi's default
    ("DDIM", "normal", "DDIMScheduler", {"timestep_spacing": "linspace"}, "Normal"),  # SillyTavern's default
    ("DPM++ 2M", "Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "Karras"),
    ("DPM++ 2M", "karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "Karras"),
    ("DPM++ 2M Karras", None, "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "Karras"),
    ("k_euler", "SGMUniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, "SGM Uniform"),
    ("Euler", "beta", "EulerDiscreteScheduler", {"use_beta_sigmas": True}, "Beta"),
    ("DPM++ 2M SDE", "exponential", "DPMSolverMultistepScheduler",
     {"algorithm_type": "sde-dpmsolver++", "use_exponential_sigmas": True}, "Exponential"),
])
def test_a_schedule_type_by_name_or_label(sampler, schedule, cls, options, label):
    chosen = samplers.resolve(sampler, schedule)
    assert (chosen.scheduler, chosen.options, chosen.schedule, chosen.notes) == (cls, options, label, [])


@pytest.mark.parametrize("sampler, schedule, note", [
    ("Euler a", "karras", "does not apply to Euler a"),  # A1111 runs it; diffusers' ancestral Euler cannot
    ("Euler", "kl_optimal", "has no diffusers equivalent"),
    ("Euler", "Align Your Steps", "has no diffusers equivalent"),
    ("Euler", "warp", "unknown schedule type"),  # A1111 falls back to the default too
])
def test_a_schedule_diffusers_cannot_run_falls_back_with_a_note(sampler, schedule, note):
    chosen = samplers.resolve(sampler, schedule)
    assert chosen.schedule == "Automatic" and chosen.options == samplers.SAMPLERS[chosen.sampler][1]
    assert note in chosen.notes[0]


@pytest.mark.parametrize("sampler", ["DPM fast", "Warp Drive"])
def test_an_unknown_sampler_is_refused_by_name(sampler):
    with pytest.raises(ApiError) as e:
        samplers.resolve(sampler, None)
    assert e.value.status == 422 and e.value.detail[0]["loc"] == ["body", "sampler_name"]


def test_every_advertised_schedule_runs_with_every_sampler_that_takes_it():
    """What /sdapi/v1/schedulers lists gives each sampler options its diffusers class accepts."""
    for name, (cls, _, _) in samplers.SAMPLERS.items():
        takes = set(inspect.signature(getattr(diffusers, cls).__init__).parameters)
        assert (cls in samplers.TAKES_SIGMAS) == ({"use_karras_sigmas", "use_beta_sigmas"} <= takes), cls
        assert (cls in samplers.TAKES_SPACING) == ("timestep_spacing" in takes), cls
        for schedule in samplers.usable_schedule_types():
            chosen = samplers.resolve(name, schedule.name)
            assert set(chosen.options) <= takes, (name, schedule.name)
