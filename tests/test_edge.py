"""The edge's pure pieces: body sanity, image headers, schedule names, owner ids (no services)."""

import msgspec
import pytest

from services.api import samplers
from services.api.auth import Keyring
from services.api.errors import ApiError
from services.api.inputs import ImageInputError, decode_image
from services.api.validation import check_sane
from services.config import ApiKey, Config, Limits

from .test_hostile import png_claiming


@pytest.mark.parametrize("body, loc", [
    ({"a": [[[[1]]]]}, ["a", 0, 0, 0]),
    ({"prompt": "a\ud800"}, ["prompt"]),
    ({"x\udfff": 1}, []),
    ({"steps": [1, float("inf")]}, ["steps", 1]),
    ({"seed": float("nan")}, ["seed"]),
])
def test_insane_body_is_422_naming_where(body, loc):
    with pytest.raises(ApiError) as e:
        check_sane(body, max_depth=4)
    assert e.value.status == 422 and e.value.detail[0]["loc"] == ["body", *loc]


def test_sane_body_passes():
    check_sane({"prompt": "zoë 🦊", "n": [1, 2.5, None, True], "deep": [[[]]]}, max_depth=4)


@pytest.mark.parametrize("width, height, words", [(15000, 15000, "larger|Bomb"), (2048, 2048, "pixels"),
                                                  (0, 64, "empty|readable"), (4000, 64, "larger")])
def test_image_header_is_checked_before_decoding(width, height, words):
    limits = Limits(max_input_pixels=1024 * 1024)
    with pytest.raises(ImageInputError, match=words):
        decode_image(png_claiming(width, height), limits)


@pytest.mark.parametrize("given, label", [("karras", "Karras"), ("Karras", "Karras"), ("sgm_uniform", "SGM Uniform"),
                                          ("SGM Uniform", "SGM Uniform"), (None, "Automatic")])
def test_schedule_types_by_label_or_name(given, label):
    assert samplers.schedule_type(given).label == label


def test_an_unknown_schedule_type_runs_as_automatic_and_says_so():
    """As A1111 (sd_schedulers.schedulers_map.get falls back to the default), never a 5xx."""
    assert samplers.schedule_type("Karras2") is None
    assert samplers.resolve(None, "Karras2").notes and samplers.resolve("Euler", "Karras2").schedule == "Automatic"


def test_owners_are_keys_not_names():
    keys = [ApiKey(key="k-alice-upper", name="Alice"), ApiKey(key="k-alice-lower", name="alice"),
            ApiKey(key="k-zoe-000000", name="zoë")]
    ring = Keyring(keys)
    upper, lower, zoe = (ring.lookup(k.key) for k in keys)
    assert len({upper.owner, lower.owner, zoe.owner}) == 3 and "alice" not in lower.owner.lower()
    assert zoe.may_see(zoe.owner) and not zoe.may_see(upper.owner) and not upper.may_see(lower.owner)
    assert zoe.may_see("zoë") is False  # names identify nobody (and non-ASCII never raises)
    assert ring.lookup("\udc80not-a-key") is None  # a key from a query string may be any text


def test_config_refuses_two_keys_with_one_id_and_sdwm_names_a_key():
    with pytest.raises(msgspec.ValidationError, match="one id"):
        msgspec.convert({"api": {"keys": [{"key": "first-key", "id": "x"}, {"key": "other-key", "id": "x"}]}},
                        type=Config)
    config = msgspec.convert({"api": {"keys": [{"key": "first-key", "name": "alice"}]}, "sdwm": {"owner": "alice"}},
                             type=Config)
    assert config.sdwm_owner == config.api_keys[0].owner != "alice"


def test_a1111_state_of_two_owners_differing_in_case_is_two_keys():
    from services.api.a1111 import KeyState

    assert KeyState.key("options", "Alice") != KeyState.key("options", "alice")
