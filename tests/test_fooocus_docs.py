"""FooocusAPI's own documented examples (mrhan1993/FooocusAPI-Docs, Writerside/topics: Text-to-image,
AsyncTask, UpscaleVary, CustomUpscaleOutpaint, InpaintOutpaint, WebHook, Preset, ImagePrompt,
MixImagePrompt, ImageEnhance, ManageTasks) replayed as written against the stack that answers a
synchronous request with the task JSON, as the FooocusAPI those documents describe does. Only the
host, the key and the images (a small picture on a local web server, a real mask) are changed."""

import asyncio
import base64
import json

import aiohttp
import pytest
from aiohttp import web

from services.cli.embedded import free_port

from .conftest import decode_image
from .stack import ALICE
from .test_breadth import mask_png, pattern_png

SOURCE = (72, 64)  # the documents' pictures, made small
MASK = "data:image/png;base64," + base64.b64encode(mask_png(*SOURCE, (16, 16, 48, 48))).decode()


@pytest.fixture
async def docs_host():
    """A web server as in the documents: the picture they name (outputs/…png), and the WebHook
    document's receiver at /post_data, which records what it is sent."""
    received: list[dict] = []

    async def picture(_):
        return web.Response(body=pattern_png(*SOURCE), content_type="image/png")

    async def post_data(request):
        received.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/outputs/2024-07-26/2024-07-26_16-13-33_3951.png", picture)
    app.router.add_post("/post_data", post_data)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", received
    await runner.cleanup()


@pytest.fixture
async def fooocus(s3_stack, docs_host):
    host, received = docs_host
    async with aiohttp.ClientSession(headers={"X-API-Key": ALICE}) as session:
        yield Docs(session, s3_stack.base_url, host, received)


class Docs:
    def __init__(self, session, base_url: str, picture_host: str, received: list):
        self.session, self.base_url, self.received = session, base_url, received
        self.picture = f"{picture_host}/outputs/2024-07-26/2024-07-26_16-13-33_3951.png"
        self.hook = f"{picture_host}/post_data"

    async def generate(self, params: dict, headers: dict | None = None, path: str = "/v1/engine/generate"):
        return await self.session.post(self.base_url + path, json=params, headers=headers)

    async def finished(self, params: dict) -> tuple[dict, list[tuple[int, int]]]:
        """The documents' default reply: the finished task's JSON; and the size of each result image."""
        resp = await self.generate(params)
        assert resp.status == 200 and resp.content_type == "application/json", await resp.text()
        task = await resp.json()
        assert task["task_status"] == "finished", task
        sizes = []
        for url in task["result"]:
            async with self.session.get(url) as image:
                sizes.append(decode_image(await image.read()).size)
        return task, sizes


async def test_text_to_image_with_nothing_and_with_a_prompt(fooocus):
    task, sizes = await fooocus.finished({})  # "发一个空数据过去都是可以的"
    assert sizes == [(64, 64)] and task["req_params"]["performance_selection"] == "Speed"
    _, sizes = await fooocus.finished({"prompt": "a dog playing with a ball", "negative_prompt": ""})
    assert sizes == [(64, 64)]


async def test_async_task_image_stream_and_async_responses(fooocus):
    params = {"prompt": "a dog playing with a ball", "negative_prompt": ""}
    resp = await fooocus.generate(params, headers={"accept": "image/webp"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/webp"
    assert decode_image(await resp.read()).format == "WEBP"
    resp = await fooocus.generate({**params, "stream_output": "true"})
    lines = [line.decode().split("\n")[0] async for line in resp.content]
    messages = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert messages[-1]["message"] == "Finished" and len(messages[-1]["images"]) == 1
    assert any(m["message"].startswith("Sampling step") for m in messages)
    resp = await fooocus.generate({**params, "async_process": "true"})
    task = await resp.json()
    assert resp.status == 200 and task["task_status"] in ("pending", "running") and task["task_id"]
    for _ in range(600):
        async with fooocus.session.get(f"{fooocus.base_url}/tasks/{task['task_id']}") as got:
            if (task := await got.json())["task_status"] == "finished":
                break
        await asyncio.sleep(0.1)
    assert task["task_status"] == "finished" and len(task["result"]) == 1


async def test_accept_outranks_stream_output_and_an_unknown_image_type_is_png(fooocus):
    resp = await fooocus.generate({"prompt": "x", "stream_output": True, "async_process": True},
                                  headers={"accept": "image/xxx"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"


async def test_upscale_and_vary(fooocus):
    _, sizes = await fooocus.finished({"uov_input_image": fooocus.picture, "uov_method": "Vary (Strong)"})
    assert sizes == [SOURCE]
    _, sizes = await fooocus.finished({"uov_input_image": fooocus.picture, "uov_method": "Upscale (Fast 2x)"})
    assert sizes == [(144, 128)]
    _, sizes = await fooocus.finished({"uov_input_image": fooocus.picture, "uov_method": "Upscale (Custom)",
                                       "upscale_multiple": 2.5})
    assert sizes == [(180, 160)]


async def test_inpaint_and_outpaint(fooocus):
    task, sizes = await fooocus.finished({"prompt": "", "inpaint_additional_prompt": "a red ball",
                                          "inpaint_input_image": fooocus.picture, "inpaint_mask_image_upload": MASK})
    assert sizes == [SOURCE] and task["req_params"]["inpaint_additional_prompt"] == "a red ball"
    _, sizes = await fooocus.finished({"inpaint_input_image": fooocus.picture,
                                       "outpaint_selections": ["Left", "Bottom"]})
    assert sizes == [(72 + 16, 64 + 16)]  # 30 % of a side, in multiples of 8, as Fooocus
    # CustomUpscaleOutpaint: distances are [left, top, right, bottom] as FooocusAPI reads them (its
    # document's comment says [left, right, top, bottom]); Right at 0 takes the default share.
    _, sizes = await fooocus.finished({"inpaint_input_image": fooocus.picture, "outpaint_selections": ["Left", "Right"],
                                       "outpaint_distance": [120, 400, 0, 200]})
    assert sizes == [(120 + 72 + 16, 64)]


async def test_webhook_receives_the_finished_task(fooocus):
    task, _ = await fooocus.finished({"prompt": "a girl", "performance_selection": "Lightning",
                                      "webhook_url": fooocus.hook})
    for _ in range(300):
        if fooocus.received:
            break
        await asyncio.sleep(0.1)
    assert fooocus.received and fooocus.received[0]["task_id"] == task["task_id"]


@pytest.mark.parametrize("params, fields", [
    ({"preset": "anime", "prompt": "a dog playing with a ball"}, {"preset"}),
    ({"preset": "sai", "prompt": "a dog playing with a ball"}, {"preset"}),
    ({"controlnet_image": [{"cn_img": "PICTURE", "cn_stop": 0.5, "cn_weight": 0.6, "cn_type": "ImagePrompt"}]},
     {"controlnet_image"}),
    ({"uov_input_image": "PICTURE", "uov_method": "Vary (Strong)", "mixing_image_prompt_and_vary_upscale": True,
      "controlnet_image": [{"cn_img": "PICTURE", "cn_stop": 0.5, "cn_weight": 0.6, "cn_type": "ImagePrompt"}]},
     {"mixing_image_prompt_and_vary_upscale", "controlnet_image"}),
    ({"inpaint_input_image": "PICTURE", "inpaint_mask_image_upload": MASK, "mixing_image_prompt_and_inpaint": True,
      "controlnet_image": [{"cn_img": "PICTURE", "cn_stop": 0.5, "cn_weight": 0.6, "cn_type": "ImagePrompt"}]},
     {"mixing_image_prompt_and_inpaint", "controlnet_image"}),
    ({"enhance_input_image": "PICTURE", "enhance_checkbox": True, "enhance_uov_method": "Vary (Strong)",
      "enhance_ctrls": [{"enhance_enabled": True, "enhance_mask_dino_prompt": "face"}]}, {"enhance_checkbox"}),
])
async def test_what_diffbus_cannot_do_is_a_422_naming_the_field(fooocus, params, fields):
    params = json.loads(json.dumps(params).replace("PICTURE", fooocus.picture))
    resp = await fooocus.generate(params, path="/v1/engine/generate/")
    detail = (await resp.json())["detail"]
    assert resp.status == 422 and detail[0]["loc"][-1] in fields, detail


async def test_manage_tasks_as_documented(fooocus):
    task, _ = await fooocus.finished({"prompt": "a lighthouse", "performance_selection": "Lightning"})

    async def get(query: str):
        async with fooocus.session.get(f"{fooocus.base_url}/tasks{query}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    everything = await get("")
    assert set(everything) == {"history", "current", "pending"}
    assert task["task_id"] in [t["task_id"] for t in everything["history"]]
    assert (await get(f"/{task['task_id']}"))["task_status"] == "finished"
    page = await get("?query=history&page=1&page_size=10")
    assert page["current"] == [] and page["pending"] == [] and len(page["history"]) <= 10
    window = "start_at=2024-07-30T11:20:22&end_at=2024-07-31T11:20:22"
    assert (await get(f"?query=history&{window}"))["history"] == []  # nothing made in 2024
    assert (await get(f"?query=history&{window}&action=delete"))["history"] == []
    assert (await get(f"/{task['task_id']}"))["task_status"] == "finished"  # outside the window: kept
