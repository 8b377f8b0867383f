"""Generation breadth: output formats and their parameters, LoRA, several models."""

import asyncio
import base64
import io
import subprocess
import sys

import aiohttp
import nats
import numpy as np
import pytest
from PIL import Image

from schemas import subjects
from schemas.codec import decode_event

from .conftest import Client, decode_image, wait_ready
from .stack import Stack

FAST = {"num_inference_steps": 3, "seed": 11}


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


async def png_info(client, data: bytes, kind: str = "png") -> dict:
    resp = await client.session.post(f"{client.base_url}/api/v1/png-info", json={"image": data_uri(data, kind)},
                                     headers=client.headers())
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.mark.parametrize("fmt, kind", [("png", "PNG"), ("webp", "WEBP"), ("jpg", "JPEG")])
async def test_parameters_round_trip_through_png_info(client, fmt, kind):
    _, [data] = await client.generate({"prompt": "a harbour, dawn", "negative_prompt": "people",
                                       "output_format": fmt, "output_quality": 80,
                                       "scheduler": "EulerDiscreteScheduler", **FAST})
    assert decode_image(data).format == kind
    info = await png_info(client, data, fmt.replace("jpg", "jpeg"))
    params = info["parameters"]
    assert params["Prompt"] == "a harbour, dawn" and params["Negative prompt"] == "people"
    assert params["Seed"] == "11" and params["Steps"] == "3" and params["Size"] == "64x64"
    assert params["Sampler"] == "EulerDiscreteScheduler" and params["Model"] == "demo"
    assert info["info"].startswith("a harbour, dawn\nNegative prompt: people\n")


async def wait_lora(client, name: str) -> None:
    """Workers announce their LoRA files; the API accepts names it has heard of."""
    for _ in range(50):
        resp = await client.post_generate({"prompt": "x", "loras": [{"name": name, "weight": 0}], **FAST})
        if resp.status == 200:
            await client.wait((await resp.json())["task_id"])
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"LoRA {name} never announced")


@pytest.mark.parametrize("lora", ["demo-style", "demo-kohya"])
async def test_lora_changes_the_image_and_never_leaks(client, lora):
    await wait_lora(client, lora)
    body = {"prompt": "a red cat", **FAST}
    _, [base] = await client.generate(body)
    _, [zero] = await client.generate({**body, "loras": [{"name": lora, "weight": 0}]})
    _, [full] = await client.generate({**body, "prompt": f"a red cat <lora:{lora}:1>"})
    _, [after] = await client.generate(body)
    assert zero == base or _max_diff(zero, base) <= 1
    assert _max_diff(full, base) > 8
    assert after == base
    params = (await png_info(client, full))["parameters"]
    assert params["Prompt"] == "a red cat" and params["Lora hashes"].startswith(f"{lora}: ")


def _max_diff(a: bytes, b: bytes) -> int:
    return int(np.abs(np.asarray(decode_image(a), dtype=int) - np.asarray(decode_image(b), dtype=int)).max())


async def test_lora_matching_no_layer_fails_the_task_clearly(client):
    for _ in range(50):
        resp = await client.post_generate({"prompt": "x <lora:demo-mismatch:1>", **FAST})
        if resp.status == 200:
            break
        await asyncio.sleep(0.2)
    task = await client.wait((await resp.json())["task_id"])
    assert task["status"] == "failed"
    assert "matched no layer" in task["error_message"]
    _, [png] = await client.generate({"prompt": "x", **FAST})  # the worker is fine after it
    assert decode_image(png).size == (64, 64)


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "loras": [{"name": "nope", "weight": 1}]}, "loras"),
    ({"prompt": "x", "loras": [{"name": "demo-style", "weight": 3}]}, "loras"),
    ({"prompt": "x <lora:demo-style:abc>"}, "prompt"),
    ({"prompt": "x", "model": "sdxl-turbo"}, "model"),
    ({"prompt": "x", "output_quality": 0}, "output_quality"),
])
async def test_bad_lora_model_or_quality_is_422(client, body, field):
    resp = await client.post_generate(body)
    assert resp.status == 422
    assert any(d["loc"][:2] == ["body", field] for d in (await resp.json())["detail"])


@pytest.fixture(scope="module")
def two_model_stack(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("two-models")
    other, checkpoint = root / "demo-b", root / "demo.safetensors"
    for command in (["demo-model", str(other), "--seed", "1"], ["demo-checkpoint", str(demo_model), str(checkpoint)]):
        subprocess.run([sys.executable, "-m", "services.cli", *command], check=True, capture_output=True)
    s = Stack(root, demo_model, models=[
        {"name": "demo", "path": str(demo_model), "width": 64, "height": 64},
        {"name": "demo-b", "path": str(other), "width": 64, "height": 64},
        {"name": "demo-single", "checkpoint": str(checkpoint), "config": str(demo_model), "width": 64, "height": 64},
    ], worker={"max_loaded_models": 1}).start_all()
    try:
        wait_ready(s)
        yield s
    finally:
        s.close()


async def test_each_model_draws_its_own_and_the_lru_keeps_one(two_model_stack):
    async with aiohttp.ClientSession() as session:
        client = Client(session, two_model_stack.base_url)
        _, [a] = await client.generate({"prompt": "x", "model": "demo", **FAST})
        _, [b] = await client.generate({"prompt": "x", "model": "demo-b", **FAST})
        assert a != b
        for _ in range(50):  # the next announcement shows the swap
            models = await (await session.get(f"{client.base_url}/api/v1/models", headers=client.headers())).json()
            loaded = {m["name"]: m["loaded"] for m in models["models"]}
            if loaded == {"demo": False, "demo-b": True, "demo-single": False}:
                break
            await asyncio.sleep(0.2)
        assert loaded == {"demo": False, "demo-b": True, "demo-single": False}
        _, [a_again] = await client.generate({"prompt": "x", "model": "demo", **FAST})
        assert a_again == a


async def test_single_file_checkpoint_draws_what_its_folder_draws(two_model_stack):
    async with aiohttp.ClientSession() as session:
        client = Client(session, two_model_stack.base_url)
        _, [folder] = await client.generate({"prompt": "a mill", "model": "demo", **FAST})
        _, [single] = await client.generate({"prompt": "a mill", "model": "demo-single", **FAST})
    assert _max_diff(folder, single) <= 1


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def pattern_png(width: int, height: int) -> bytes:
    rng = np.random.default_rng(5)
    return png_bytes(Image.fromarray(rng.integers(0, 255, (height, width, 3)).astype(np.uint8)))


def mask_png(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return png_bytes(mask)


@pytest.mark.parametrize("options", [{}, {"inpaint_full_res": True, "inpaint_full_res_padding": 8},
                                     {"inpainting_fill": "latent_noise"}, {"inpainting_fill": "latent_nothing"}])
async def test_inpaint_changes_only_the_masked_pixels(client, options):
    init = pattern_png(72, 64)
    box = (20, 16, 52, 44)
    _, [png] = await client.generate({"prompt": "a window", "init_image": data_uri(init),
                                      "mask_image": data_uri(mask_png(72, 64, box)), "mask_blur": 4,
                                      "strength": 0.8, "num_inference_steps": 5, **options})
    out = np.asarray(decode_image(png).convert("RGB"), dtype=int)
    before = np.asarray(decode_image(init).convert("RGB"), dtype=int)
    assert out.shape == before.shape
    outside = np.ones(out.shape[:2], bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert np.abs(out - before)[outside].max() <= 1
    assert np.abs(out - before)[~outside].mean() > 10


async def test_outpaint_grows_the_canvas_by_exactly_the_margins(client):
    init = pattern_png(64, 48)
    _, [png] = await client.generate({"prompt": "a wide field", "init_image": data_uri(init), "strength": 1.0,
                                      "outpaint": {"left": 16, "top": 0, "right": 12, "bottom": 20},
                                      "num_inference_steps": 4})
    out = np.asarray(decode_image(png).convert("RGB"), dtype=int)
    assert out.shape[:2] == (48 + 20, 64 + 16 + 12)
    original = out[0:48, 16:16 + 64]
    assert np.abs(original - np.asarray(decode_image(init), dtype=int)).max() <= 1


async def test_mask_without_init_image_is_422(client):
    resp = await client.post_generate({"prompt": "x", "mask_image": data_uri(mask_png(64, 64, (0, 0, 8, 8)))})
    assert resp.status == 422


async def test_one_image_of_a_batch_can_be_made_alone(client):
    _, batch = await client.generate({"prompt": "a boat", "num_images": 3, "seed": 100, "num_inference_steps": 4})
    _, [alone] = await client.generate({"prompt": "a boat", "seed": 102, "num_inference_steps": 4})
    assert _max_diff(batch[2], alone) <= 1


@pytest.fixture(scope="module")
def batching_stack(tmp_path_factory, demo_model):
    s = Stack(tmp_path_factory.mktemp("batching"), demo_model,
              worker={"batching": {"enabled": True, "max_images": 8, "max_wait_ms": 200}}).start_all()
    try:
        wait_ready(s)
        yield s
    finally:
        s.close()


async def test_compatible_jobs_run_as_one_batch_with_the_same_images(batching_stack):
    bodies = [{"prompt": f"a boat {i}", "seed": 10 + i, "num_inference_steps": 4,
               **({"negative_prompt": "fog"} if i % 2 else {})} for i in range(4)]
    nc = await nats.connect(batching_stack.nats_url)
    try:
        started = await nc.subscribe(subjects.task_event("*", "started"))
        async with aiohttp.ClientSession() as session:
            client = Client(session, batching_stack.base_url)
            alone = [(await client.generate(body))[1][0] for body in bodies]
            busy = await client.submit({"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 30})
            while decode_event((await started.next_msg(timeout=30)).data).task_id != busy:
                pass
            ids = [await client.submit(body) for body in bodies]
            batched = [await client.download((await client.wait(task_id))["result_url"]) for task_id in ids]
        events = {}
        while len(events) < 4:
            event = decode_event((await started.next_msg(timeout=10)).data)
            if event.task_id in ids:
                events[event.task_id] = event
    finally:
        await nc.close()
    assert all(sorted(event.batch) == sorted(ids) for event in events.values())
    assert all(_max_diff(a, b) <= 1 for a, b in zip(alone, batched))


async def test_a_task_cancelled_inside_a_batch_ends_cancelled_and_the_others_complete(batching_stack):
    """A batch runs on for its other tasks; the cancelled one ends cancelled, with no image."""
    bodies = [{"prompt": f"a kite {i}", "seed": 30 + i, "num_inference_steps": 40, "width": 256, "height": 256}
              for i in range(3)]
    nc = await nats.connect(batching_stack.nats_url)
    try:
        started = await nc.subscribe(subjects.task_event("*", "started"))
        async with aiohttp.ClientSession() as session:
            client = Client(session, batching_stack.base_url)
            busy = await client.submit({"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 30})
            while decode_event((await started.next_msg(timeout=30)).data).task_id != busy:
                pass
            ids = [await client.submit(body) for body in bodies]
            while not set(decode_event((await started.next_msg(timeout=60)).data).batch) >= set(ids):
                pass
            async with session.post(f"{batching_stack.base_url}/api/v1/tasks/{ids[1]}/cancel",
                                    headers=client.headers()) as resp:
                assert resp.status in (200, 202), await resp.text()
            tasks = [await client.wait(task_id, timeout=120) for task_id in ids]
    finally:
        await nc.close()
    assert [t["status"] for t in tasks] == ["completed", "cancelled", "completed"], tasks
    assert not tasks[1].get("result_urls")
