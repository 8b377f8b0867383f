"""AUTOMATIC1111 prompt syntax: attention weights, BREAK, and prompts longer than one CLIP chunk."""

import numpy as np
import pytest

from services.gpu_worker.prompts import parse

from .conftest import decode_image


@pytest.mark.parametrize("text, fragments", [
    ("a (cat) and [dog]", [("a ", 1.0), ("cat", 1.1), (" and ", 1.0), ("dog", 1 / 1.1)]),
    ("((cat))", [("cat", 1.1 * 1.1)]),
    ("(cat:1.5), dog", [("cat", 1.5), (", dog", 1.0)]),
    (r"a \(literal\) bracket", [("a (literal) bracket", 1.0)]),
    ("sky BREAK sea", [("sky", 1.0), ("BREAK", None), ("sea", 1.0)]),
    ("time: 10:30", [("time: 10:30", 1.0)]),
    ("[(cat:1.3)]", [("cat", 1.3 / 1.1)]),
])
def test_prompt_attention_syntax(text, fragments):
    got = parse(text)
    assert [t for t, _ in got] == [t for t, _ in fragments]
    for (_, weight), (_, expected) in zip(got, fragments):
        assert weight is None if expected is None else weight == pytest.approx(expected)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data).convert("RGB"), dtype=int)


async def test_weighted_word_changes_the_image_and_weight_one_is_the_plain_word(client):
    body = {"seed": 4, "num_inference_steps": 3}
    _, [plain] = await client.generate({"prompt": "a cat", **body})
    _, [heavy] = await client.generate({"prompt": "a (cat:1.9)", **body})
    _, [one] = await client.generate({"prompt": "a (cat:1.0)", **body})
    assert np.abs(pixels(plain) - pixels(heavy)).max() > 1  # beyond rounding: the weight took effect
    assert np.abs(pixels(plain) - pixels(one)).max() <= 1


async def test_every_chunk_of_a_long_prompt_counts(client):
    head = "a very long description of a quiet harbour " * 8  # several 75-token chunks
    body = {"seed": 4, "num_inference_steps": 3}
    _, [first] = await client.generate({"prompt": head + "under a red evening sky", **body})
    _, [second] = await client.generate({"prompt": head + "in thick grey winter fog", **body})
    assert np.abs(pixels(first) - pixels(second)).max() > 0
    long_negative = "blurry, lowres, bad anatomy, " * 20
    _, [a] = await client.generate({"prompt": "x", "negative_prompt": long_negative + "text", **body})
    _, [b] = await client.generate({"prompt": "x", "negative_prompt": long_negative + "watermark", **body})
    assert np.abs(pixels(a) - pixels(b)).max() > 0
