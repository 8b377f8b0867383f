"""The FooocusAPI dialect, driven the way seeds/fooocusapi.md's client code drives it."""

import asyncio
import io
import json
from datetime import UTC, datetime

from PIL import Image

from services import imaging

from .conftest import decode_image, png_data_uri
from .stack import ALICE, BOB

GENERATE = "/v1/engine/generate/"
FAST = {"aspect_ratios_selection": "64*64", "overwrite_step": 4}


async def post(client, body: dict, key: str = ALICE):
    return await client.session.post(f"{client.base_url}{GENERATE}", data=json.dumps(body),
                                     headers={"X-API-Key": key})


async def get(client, path: str, key: str = ALICE):
    async with client.session.get(f"{client.base_url}{path}", headers={"X-API-Key": key}) as resp:
        return resp.status, await resp.json()


async def finished(client, task_id: str, timeout: float = 60) -> dict:
    for _ in range(int(timeout * 10)):
        status, task = await get(client, f"/tasks/{task_id}")
        assert status == 200, task
        if task["task_status"] not in ("pending", "running"):
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"{task_id} did not finish: {task}")


async def submit_async(client, body: dict, key: str = ALICE) -> dict:
    resp = await post(client, {**FAST, **body, "async_process": True}, key)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_async_process_returns_the_task_object_then_history_has_it(client):
    task = await submit_async(client, {"prompt": "a lighthouse", "image_seed": 7, "webhook_url": ""})
    assert task["task_status"] == "pending" and task["result"] == [] and task["webhook_url"] == ""
    assert set(task) >= {"id", "task_id", "req_params", "in_queue_mills", "start_mills", "finish_mills",
                         "progress", "result"}
    done = await finished(client, task["task_id"])
    assert done["task_status"] == "finished" and done["progress"] == 100 and done["id"] == task["id"] > 0
    assert done["in_queue_mills"] <= done["start_mills"] <= done["finish_mills"]
    params = done["req_params"]  # the whole request, defaults included
    assert params["prompt"] == "a lighthouse" and params["performance_selection"] == "Speed"
    assert params["image_seed"] == 7 and params["async_process"] is True
    image = decode_image(await client.download(done["result"][0]))
    assert image.size == (64, 64) and image.format == "PNG"
    assert "preview" not in done  # only a running task carries one


async def test_stream_output_parsed_like_the_seed_client(client):
    resp = await post(client, {**FAST, "prompt": "a forest", "overwrite_step": 6, "stream_output": True})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    messages = []
    async for raw in resp.content:  # the seed: iter_lines, line[6:], skip what is not JSON
        line = raw.decode().split("\n")[0].strip()
        if not line:
            continue
        try:
            messages.append(json.loads(line[6:]))
        except json.JSONDecodeError:
            continue
    assert all(set(m) == {"progress", "preview", "message", "images"} for m in messages)
    sampling = [m for m in messages if m["message"].startswith("Sampling step")]
    assert [m["message"] for m in sampling][-1] == "Sampling step 6/6, image 1/1 ..."
    assert any(m["preview"] and m["preview"].startswith("data:image/") for m in sampling)
    progress = [m["progress"] for m in messages]
    assert progress == sorted(progress)
    last = messages[-1]
    assert last["message"] == "Finished" and last["progress"] == 100 and len(last["images"]) == 1
    assert decode_image(await client.download(last["images"][0])).size == (64, 64)


async def test_binary_reply_is_the_image_itself(client):
    body = {**FAST, "prompt": "a cat", "image_seed": 3, "image_number": 3, "output_format": "jpeg",
            "async_process": False, "stream_output": False}
    first = await post(client, body)
    assert first.status == 200 and first.headers["Content-Type"] == "image/jpeg"
    image = decode_image(await first.read())
    assert image.format == "JPEG" and image.size == (64, 64)  # image_number forced to 1
    again = await post(client, body)
    assert await again.read() == await first.read()  # same seed, same bytes


async def test_styles_seed_increment_and_metadata(client):
    body = {**FAST, "prompt": "a boat", "style_selections": ["Watercolor"], "image_number": 2, "image_seed": 11,
            "disable_seed_increment": True, "save_metadata_to_images": True, "metadata_scheme": "a1111"}
    done = await finished(client, (await submit_async(client, body))["task_id"])
    first, second = [await client.download(url) for url in done["result"]]
    assert first == second  # one seed for both images
    with Image.open(io.BytesIO(first)) as img:
        text = imaging.read_parameters(img)
    assert text.startswith("watercolor painting of a boat") and "Seed: 11" in text
    plain = await finished(client, (await submit_async(client, {**FAST, "prompt": "a boat"}))["task_id"])
    with Image.open(io.BytesIO(await client.download(plain["result"][0]))) as img:
        assert imaging.read_parameters(img) is None  # save_metadata_to_images defaults to false


async def test_what_cannot_be_honoured_is_refused_by_name(client):
    for body, field in (({"freeu_enabled": True}, "freeu_enabled"), ({"refiner_model_name": "x.safetensors"},
                        "refiner_model_name"), ({"controlnet_image": [{"cn_img": "x"}]}, "controlnet_image"),
                        ({"style_selections": ["Fooocus V2"]}, "style_selections"),
                        ({"sampler_name": "restart"}, "sampler_name"), ({"image_number": 99}, "image_number"),
                        ({"aspect_ratios_selection": "wide"}, "aspect_ratios_selection")):
        resp = await post(client, {**FAST, "prompt": "x", "async_process": True, **body})
        assert resp.status == 422, (body, await resp.text())
        detail = (await resp.json())["detail"]
        assert detail[0]["loc"][-1] == field, detail
    # Fooocus defaults sent explicitly are fine: clients send the whole parameter set
    defaults = {"sharpness": 2.0, "adm_scaler_positive": 1.5, "freeu_enabled": False, "refiner_model_name": "None",
                "sampler_name": "dpmpp_2m_sde_gpu", "scheduler_name": "karras", "loras": [
                    {"enabled": False, "model_name": "sd_xl_offset_example-lora_1.0.safetensors", "weight": 0.1}]}
    resp = await post(client, {**FAST, "prompt": "x", "async_process": True, **defaults})
    assert resp.status == 200, await resp.text()


async def test_vary_upscale_inpaint_and_outpaint(client):
    source = png_data_uri(72, 64)
    vary = await finished(client, (await submit_async(client, {
        "prompt": "x", "uov_method": "Vary (Subtle)", "uov_input_image": source}))["task_id"])
    assert decode_image(await client.download(vary["result"][0])).size == (72, 64)
    assert vary["req_params"]["uov_input_image"].startswith(client.base_url + "/files/inputs/")
    upscaled = await finished(client, (await submit_async(client, {
        "uov_method": "Upscale (Custom)", "upscale_multiple": 1.5, "uov_input_image": source}))["task_id"])
    assert decode_image(await client.download(upscaled["result"][0])).size == (108, 96)
    mask = png_data_uri(72, 64, (255, 255, 255))
    inpainted = await finished(client, (await submit_async(client, {
        "prompt": "x", "inpaint_input_image": source, "inpaint_mask_image_upload": mask,
        "inpaint_additional_prompt": "a hat"}))["task_id"])
    assert inpainted["task_status"] == "finished"
    outpainted = await finished(client, (await submit_async(client, {
        "prompt": "x", "inpaint_input_image": source, "outpaint_selections": ["Left", "Bottom"],
        "outpaint_distance": [16, 0, 0, 8]}))["task_id"])
    assert decode_image(await client.download(outpainted["result"][0])).size == (88, 72)
    resp = await post(client, {"uov_method": "Vary (Strong)", "uov_input_image": png_data_uri(32, 32),
                               "async_process": True})
    assert resp.status == 422 and (await resp.json())["detail"][0]["loc"][-1] == "uov_input_image"


async def test_history_pages_and_deletes_a_time_range(client):
    start = datetime.now(UTC).replace(tzinfo=None).isoformat()  # no zone: UTC
    source = png_data_uri(64, 64, (10, 200, 10))
    ids = []
    for i in range(3):
        task = await submit_async(client, {"prompt": f"h{i}", "uov_method": "Vary (Strong)", "uov_input_image": source})
        ids.append(task["task_id"])
    done = [await finished(client, task_id) for task_id in ids]
    await submit_async(client, {"prompt": "bob's"}, key=BOB)
    status, first = await get(client, f"/tasks?query=history&page=0&page_size=2&start_at={start}")
    assert status == 200 and set(first) == {"history", "current", "pending"}
    assert first["current"] == [] and first["pending"] == []
    status, second = await get(client, f"/tasks?query=history&page=1&page_size=2&start_at={start}")
    listed = [t["task_id"] for t in first["history"] + second["history"]]
    assert sorted(listed) == sorted(ids) and len(first["history"]) == 2  # newest first, bob's not among them
    status, after = await get(client, f"/tasks?query=history&action=delete&start_at={start}")
    assert status == 200 and after["history"] == []
    for task in done:
        async with client.session.get(task["result"][0]) as resp:
            assert resp.status == 404  # result images gone
        assert (await get(client, f"/tasks/{task['task_id']}"))[0] == 404
    await client.download(done[0]["req_params"]["uov_input_image"])  # inputs stay


async def test_models_ping_and_control(client):
    status, models = await get(client, "/v1/engines/all-models")
    assert status == 200 and models["model_filenames"] == ["demo"] and "lora_filenames" in models
    async with client.session.get(f"{client.base_url}/ping") as resp:
        assert await resp.text() == "pong"
    task = await submit_async(client, {"prompt": "long", "aspect_ratios_selection": "512*512", "overwrite_step": 60})
    try:
        for _ in range(1200):
            status, current = await get(client, "/tasks?query=current")
            if current["current"]:
                break
            await asyncio.sleep(0.05)
        assert current["current"][0]["task_id"] == task["task_id"] and "preview" in current["current"][0]
        resp = await client.session.post(f"{client.base_url}/v1/engine/control?action=stop",
                                         headers={"X-API-Key": ALICE})
        assert resp.status == 200 and (await resp.json())["task_ids"] == [task["task_id"]]
        assert (await finished(client, task["task_id"]))["task_status"] == "stop"
    finally:  # never leave a minutes-long job in the worker for the tests after this one
        await client.session.post(f"{client.base_url}/api/v1/tasks/{task['task_id']}/cancel",
                                  headers={"X-API-Key": ALICE})


async def test_wrong_key_is_401(client):
    resp = await post(client, {"prompt": "x", "async_process": True}, key="nope-nope-nope")
    assert resp.status == 401 and "detail" in await resp.json()
