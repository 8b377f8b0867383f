"""The sd_work_manager dialect with the original's envelope and codes, and one task seen from every
dialect."""

import asyncio
import base64
import io

import aiohttp
from PIL import Image

from services import config

from .conftest import Client, decode_image, health, png_data_uri
from .stack import ALICE, SDWM_SECRET, Stack, wait_until

NEGATIVE = "deformed,lowres,deformed,bad anatomy,disfigured,poorly drawn face,mutation"


async def call(client, name: str, body: dict, secret: str = SDWM_SECRET):
    async with client.session.post(f"{client.base_url}/api/Task/{name}", json=body,
                                   headers={"X-API-SECRET": secret}) as resp:
        return resp.status, await resp.json()


async def state_when_done(client, task_id: int, timeout: float = 60) -> dict:
    for _ in range(int(timeout * 10)):
        status, reply = await call(client, "getTaskState", {"taskId": task_id})
        assert status == 200 and reply["code"] == 0, reply
        if reply["data"]["status"] >= 2:
            return reply["data"]
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish")


def images(state: dict) -> list[Image.Image]:
    return [decode_image(base64.b64decode(data)) for data in state["resultImages"]]


async def test_txt2img_as_the_seed_sends_it(client):
    status, reply = await call(client, "submitTxt2ImgTask", {
        "width": 64, "height": 64, "prompts": "loli", "negativePrompts": NEGATIVE, "count": 2, "steps": 4,
        "scale": 8, "comment": "test", "seed": 5})
    assert status == 200 and reply["code"] == 0 and reply["msg"] == "ok" and isinstance(reply["data"], int)
    state = await state_when_done(client, reply["data"])
    assert state["id"] == reply["data"] and state["status"] == 2 and state["type"] == 0
    assert state["comment"] == "test" and state["errMsg"] is None and state["progress"] == 1.0
    assert [i.size for i in images(state)] == [(64, 64), (64, 64)]
    assert (state["resultSeed"], state["resultWidth"], state["resultHeight"]) == (5, 64, 64)


async def test_img2img_makes_one_image_per_initial_image(client):
    initial = [png_data_uri(80, 40).split(",", 1)[1], png_data_uri(40, 80, (0, 0, 255)).split(",", 1)[1]]
    status, reply = await call(client, "submitImg2ImgTask", {
        "width": 64, "height": 64, "prompts": "loli", "initialImages": initial, "negativePrompts": NEGATIVE,
        "steps": 4, "scale": 8, "denoise": 0.5, "resizeMode": 2, "comment": "two"})
    assert status == 200 and reply["code"] == 0, reply
    state = await state_when_done(client, reply["data"])
    assert state["status"] == 2 and state["type"] == 1
    assert [i.size for i in images(state)] == [(64, 64), (64, 64)]


async def test_upscale(client):
    image = png_data_uri(32, 24).split(",", 1)[1]
    status, reply = await call(client, "submitUpscaleTask", {"image": image, "scale": 4})
    assert status == 200 and reply["code"] == 0, reply
    state = await state_when_done(client, reply["data"])
    assert state["type"] == 2 and (state["resultWidth"], state["resultHeight"]) == (128, 96)
    assert images(state)[0].size == (128, 96)


async def test_errors_keep_the_envelope(client):
    status, reply = await call(client, "submitTxt2ImgTask", {"width": 64}, secret="wrong")
    assert status == 401 and reply == {"code": -103, "msg": "Authorize failed", "data": None}
    status, reply = await call(client, "submitTxt2ImgTask", {"width": 64, "height": 64, "prompts": "x"})
    assert status == 400 and reply["code"] == -100 and "negativePrompts" in reply["msg"]
    status, reply = await call(client, "submitTxt2ImgTask", {"width": "64", "height": 64, "prompts": "x",
                                                             "negativePrompts": "", "count": 1, "steps": 4, "scale": 8})
    assert status == 400 and reply["code"] == -101 and "width" in reply["msg"]
    status, reply = await call(client, "submitTxt2ImgTask", {"width": 60, "height": 64, "prompts": "x",
                                                             "negativePrompts": "", "count": 1, "steps": 4, "scale": 8})
    assert status == 400 and reply["code"] == -101 and "multiple of 8" in reply["msg"]
    status, reply = await call(client, "submitTxt2ImgTask", {"width": 64, "height": 64, "prompts": "x", "module": "nope",
                                                             "negativePrompts": "", "count": 1, "steps": 4, "scale": 8})
    assert status == 400 and reply["code"] == -101 and "nope" in reply["msg"]
    status, reply = await call(client, "submitTxt2ImgTask", {"width": 64, "height": 64, "prompts": "x",
                                                             "negativePrompts": "", "count": 1, "steps": 999, "scale": 8})
    assert status == 400 and reply["msg"].startswith("steps:")  # its own field name, not num_inference_steps
    status, reply = await call(client, "getTaskState", {"taskId": 987654321})
    assert status == 200 and reply == {"code": 0, "msg": "ok", "data": None}


async def test_a_task_is_visible_in_every_dialect(client):
    # sd_work_manager -> native and FooocusAPI (its tasks belong to alice: sdwm.owner in tests/stack.py)
    _, reply = await call(client, "submitTxt2ImgTask", {"width": 64, "height": 64, "prompts": "shared", "steps": 3,
                                                        "negativePrompts": "", "count": 1, "scale": 7, "seed": 9})
    state = await state_when_done(client, reply["data"])
    async with client.session.get(f"{client.base_url}/api/v1/tasks?page_size=100",
                                  headers={"X-API-Key": ALICE}) as resp:
        listed = (await resp.json())["tasks"]
    async with client.session.get(f"{client.base_url}/tasks?query=history&page_size=100",
                                  headers={"X-API-Key": ALICE}) as resp:
        fooocus = {t["id"]: t for t in (await resp.json())["history"]}
    task = fooocus[state["id"]]
    assert task["task_status"] == "finished" and task["task_id"] in {t["task_id"] for t in listed}
    native_view = await (await client.task(task["task_id"])).json()
    assert native_view["status"] == "completed"
    assert await client.download(native_view["result_url"]) == base64.b64decode(state["resultImages"][0])
    # native -> sd_work_manager, by the number FooocusAPI shows as `id`
    task_id = await client.submit({"prompt": "native", "num_inference_steps": 3, "seed": 4})
    await client.wait(task_id)
    async with client.session.get(f"{client.base_url}/tasks/{task_id}", headers={"X-API-Key": ALICE}) as resp:
        number = (await resp.json())["id"]
    state = await state_when_done(client, number)
    with Image.open(io.BytesIO(base64.b64decode(state["resultImages"][0]))) as img:
        assert img.size == (64, 64) and state["resultSeed"] == 4


def test_the_originals_config_keys_work(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text('{"webApiListenHost": "0.0.0.0", "webApiListenPort": 17059, "webApiSecret": "qwert12345",'
                    ' "storageDBUrl": "sqlite::memory:"}')
    loaded = config.load(path, environ={})
    assert (loaded.api.host, loaded.api.port, loaded.sdwm.secret) == ("0.0.0.0", 17059, "qwert12345")
    assert loaded.projector.db == ":memory:"
    path.write_text('{"storageDBUrl": "sqlite:tasks-sdwm.db"}')
    assert config.load(path, environ={}).projector.db == "tasks-sdwm.db"


async def test_an_in_memory_projection_is_rebuilt_at_each_start(tmp_path, demo_model):
    """storageDBUrl: sqlite::memory: — nothing on disk, and a restarted projector still knows every task."""
    stack = Stack(tmp_path, demo_model, projector={"db": ":memory:"}).start_nats()
    try:
        projector = stack.start("projector")
        stack.start("api")
        wait_until(lambda: health(stack.base_url), 30, "the api", stack)
        async with aiohttp.ClientSession() as session:
            client = Client(session, stack.base_url)
            task_id = await client.submit({"prompt": "kept", "num_inference_steps": 2})  # no worker: stays pending
            for _ in range(2):
                for _ in range(100):
                    async with session.get(f"{stack.base_url}/api/v1/tasks", headers={"X-API-Key": ALICE}) as r:
                        tasks = (await r.json())["tasks"] if r.status == 200 else []  # 503 while it restarts
                    if tasks:
                        break
                    await asyncio.sleep(0.1)
                assert [t["task_id"] for t in tasks] == [task_id] and tasks[0]["status"] == "pending"
                Stack.stop(projector)
                projector = stack.start("projector")
        assert not list((tmp_path / "data").glob("*.db"))
    finally:
        stack.close()
