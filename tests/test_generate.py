"""A user generates images through the native dialect and downloads them: with the default storage
(the JetStream object store, images served by the API) and with S3 (a real `weed mini`, images
downloaded from presigned URLs)."""

import aiohttp
import numpy as np
import pytest

from .conftest import Client, decode_image, png_data_uri


@pytest.fixture(params=["nats", "s3"], scope="module")
def backend_stack(request):
    return request.getfixturevalue("stack" if request.param == "nats" else "s3_stack")


@pytest.fixture
async def client(backend_stack):
    async with aiohttp.ClientSession() as session:
        yield Client(session, backend_stack.base_url)

FAST = {"num_inference_steps": 4}


async def test_txt2img_png_has_requested_size(client):
    task, [png] = await client.generate({"prompt": "a red cat", "width": 96, "height": 64, **FAST})
    img = decode_image(png)
    assert img.format == "PNG"
    assert img.size == (96, 64)
    assert task["result_urls"] is None
    assert task["error_message"] is None
    assert task["created_at"] <= task["updated_at"]


async def test_three_images_are_three_distinct_results(client):
    task, pngs = await client.generate({"prompt": "a red cat", "num_images": 3, **FAST})
    assert task["result_url"] is None
    assert len(task["result_urls"]) == 3
    assert all(decode_image(p).size == (64, 64) for p in pngs)
    assert len(set(pngs)) == 3


async def test_same_seed_gives_same_png(client):
    body = {"prompt": "a lighthouse", "seed": 1234, **FAST}
    _, [first] = await client.generate(body)
    _, [second] = await client.generate(body)
    _, [other] = await client.generate({**body, "seed": 1235})
    assert first == second
    assert other != first


async def test_png_carries_its_generation_parameters(client):
    _, [png] = await client.generate({"prompt": "a lighthouse", "negative_prompt": "fog", "seed": 7,
                                      "scheduler": "EulerDiscreteScheduler", **FAST})
    parameters = decode_image(png).info["parameters"]
    assert parameters.startswith("a lighthouse\nNegative prompt: fog\n")
    assert "Seed: 7" in parameters and "Steps: 4" in parameters and "Size: 64x64" in parameters


async def test_every_scheduler_of_the_seed_runs(client):
    for name in ("DPMSolverMultistepScheduler", "DDIMScheduler", "EulerAncestralDiscreteScheduler",
                 "PNDMScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
                 "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "UniPCMultistepScheduler"):
        _, [png] = await client.generate({"prompt": "x", "scheduler": name, "seed": 1, "num_inference_steps": 2})
        assert decode_image(png).size == (64, 64), name


async def test_jpeg_output(client):
    _, [jpg] = await client.generate({"prompt": "a red cat", "output_format": "jpg", **FAST})
    assert decode_image(jpg).format == "JPEG"


async def test_img2img_keeps_input_size_and_follows_the_input(client):
    red, blue = png_data_uri(80, 64, (230, 20, 20)), png_data_uri(80, 64, (20, 20, 230))
    body = {"prompt": "a cat", "strength": 0.3, "seed": 5, "num_inference_steps": 10}
    _, [from_red] = await client.generate({**body, "init_image": red})
    _, [from_blue] = await client.generate({**body, "init_image": blue})
    red_img, blue_img = decode_image(from_red), decode_image(from_blue)
    assert red_img.size == (80, 64)
    r = np.asarray(red_img.convert("RGB"), dtype=float).mean(axis=(0, 1))
    b = np.asarray(blue_img.convert("RGB"), dtype=float).mean(axis=(0, 1))
    # A low strength keeps the input's colour: red stays redder than the blue one, and vice versa.
    assert r[0] - r[2] > b[0] - b[2]


async def test_no_seed_picks_a_random_one_and_records_it(client):
    _, [png] = await client.generate({"prompt": "x", **FAST})
    seed = int(decode_image(png).info["parameters"].split("Seed: ")[1].split(",")[0])
    _, [again] = await client.generate({"prompt": "x", "seed": seed, **FAST})
    assert again == png
