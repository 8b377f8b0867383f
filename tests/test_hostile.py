"""Hostile bodies, dialect by dialect: each gets its 4xx in the dialect's own error shape and changes
nothing (no task event, no job, no stored object). Each row is a class of defect once seen as a 5xx
or as bad input queued (issue 16)."""

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from schemas import subjects
from services.storage import ObjectStoreStorage

from .conftest import png_data_uri
from .stack import ALICE, SDWM_SECRET

SURROGATE = b'"a\\ud800b"'  # a lone UTF-16 surrogate, as JSON escapes it
DEEP = b"[" * 100_000 + b"]" * 100_000


def png_claiming(width: int, height: int) -> str:
    """A 1x1 PNG whose header claims width x height (a decompression bomb as far as sizes go)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode()


BOMB = png_claiming(15000, 15000).encode()
GOOD = png_data_uri(64, 64).encode()


def native(detail) -> bool:
    return isinstance(detail.get("detail"), list | str)


def a1111(body) -> bool:
    return {"error", "detail", "body", "errors"} <= set(body)


def sdwm(body) -> bool:
    return body["code"] < 0 and body["msg"] and body["data"] is None


CASES = [  # (name, path, raw body, status, shape)
    ("native deep", "/api/v1/generate", DEEP, 422, native),
    ("native surrogate", "/api/v1/generate", b'{"prompt": ' + SURROGATE + b"}", 422, native),
    ("native NaN", "/api/v1/generate", b'{"prompt": "x", "guidance_scale": NaN}', 422, native),
    ("native inf steps", "/api/v1/generate", b'{"prompt": "x", "num_inference_steps": 1e400}', 422, native),
    ("native huge seed", "/api/v1/generate", b'{"prompt": "x", "seed": 18446744073709551616}', 422, native),
    ("native zero width", "/api/v1/generate", b'{"prompt": "x", "width": 0}', 422, native),
    ("native bomb", "/api/v1/generate", b'{"prompt": "x", "init_image": "' + BOMB + b'"}', 422, native),
    ("native surrogate key", "/api/v1/generate", b'{"prompt": "x", ' + SURROGATE + b": 1}", 422, native),
    ("native bad utf-8", "/api/v1/generate", b'{"prompt": "\xff"}', 422, native),
    ("upscale bomb", "/api/v1/upscale", b'{"image": "' + BOMB + b'"}', 422, native),
    ("a1111 deep", "/sdapi/v1/txt2img", DEEP, 422, a1111),
    # an unknown schedule type is not hostile: A1111 runs it as Automatic (tests/test_samplers.py, test_edge.py)
    ("a1111 unknown sampler", "/sdapi/v1/txt2img", b'{"prompt": "x", "sampler_name": "Karras2"}', 422, a1111),
    ("a1111 zero width hires", "/sdapi/v1/txt2img",
     b'{"prompt": "x", "width": 0, "enable_hr": true, "hr_resize_x": 64}', 422, a1111),
    ("a1111 surrogate", "/sdapi/v1/txt2img", b'{"negative_prompt": ' + SURROGATE + b"}", 422, a1111),
    ("a1111 bomb", "/sdapi/v1/img2img", b'{"init_images": ["' + BOMB + b'"], "width": 64, "height": 64}', 422, a1111),
    ("a1111 0x0 resize", "/sdapi/v1/img2img", b'{"init_images": ["' + GOOD + b'"], "width": 0, "height": 0}', 422,
     a1111),
    ("a1111 huge resize", "/sdapi/v1/img2img",
     b'{"init_images": ["' + GOOD + b'"], "width": 1000000, "height": 1000000}', 422, a1111),
    ("a1111 bad task_id", "/sdapi/v1/img2img",
     b'{"init_images": ["' + GOOD + b'"], "width": 64, "height": 64, "task_id": "a.b"}', 422, a1111),
    ("a1111 extras bomb", "/sdapi/v1/extra-single-image", b'{"image": "' + BOMB + b'"}', 422, a1111),
    ("a1111 options deep", "/sdapi/v1/options", DEEP, 422, a1111),
    ("fooocus unknown scheduler", "/v1/engine/generate/",
     b'{"prompt": "x", "scheduler_name": "weird", "async_process": true}', 422, native),
    ("fooocus deep", "/v1/engine/generate/", DEEP, 422, native),
    ("fooocus mask bomb", "/v1/engine/generate/",
     b'{"prompt": "x", "async_process": true, "inpaint_input_image": "' + GOOD
     + b'", "inpaint_mask_image_upload": "' + BOMB + b'", "inpaint_erode_or_dilate": 3}', 422, native),
    ("sdwm inf steps", "/api/Task/submitTxt2ImgTask",
     b'{"width": 64, "height": 64, "prompts": "x", "negativePrompts": "", "count": 1, "steps": 1e999, "scale": 7}',
     422, sdwm),
    ("sdwm surrogate comment", "/api/Task/submitTxt2ImgTask",
     b'{"width": 64, "height": 64, "prompts": "x", "negativePrompts": "", "count": 1, "steps": 2, "scale": 7, '
     b'"comment": ' + SURROGATE + b"}", 422, sdwm),
    ("sdwm zero size", "/api/Task/submitTxt2ImgTask",
     b'{"width": 0, "height": 0, "prompts": "x", "negativePrompts": "", "count": 1, "steps": 2, "scale": 7}',
     400, sdwm),
    ("sdwm bad second image", "/api/Task/submitImg2ImgTask",
     b'{"width": 64, "height": 64, "prompts": "x", "negativePrompts": "", "steps": 4, "scale": 7, "denoise": 0.5, '
     b'"resizeMode": 0, "initialImages": ["' + GOOD + b'", "' + BOMB + b'"]}', 422, sdwm),
]
HEADERS = {"X-API-Key": ALICE, "X-API-SECRET": SDWM_SECRET, "Content-Type": "application/json"}


async def sequences(js) -> tuple[int, ...]:
    """Last sequences of TASKS, JOBS and the image store: any task, job or stored object moves one."""
    streams = (subjects.TASKS, subjects.JOBS, ObjectStoreStorage.STREAM)
    return tuple([(await js.stream_info(name)).state.last_seq for name in streams])


@pytest.mark.parametrize("name, path, body, status, shape", CASES, ids=[c[0] for c in CASES])
async def test_hostile_body_gets_its_dialects_4xx_and_changes_nothing(client, js, name, path, body, status, shape):
    before = await sequences(js)
    async with client.session.post(client.base_url + path, data=body, headers=HEADERS) as resp:
        assert resp.status == status, await resp.text()
        assert shape(await resp.json()), await resp.text()
    assert await sequences(js) == before


@pytest.mark.parametrize("task_id", [2**63, 2**64, -1, 0, 1e300])
async def test_sdwm_task_number_out_of_range_is_no_such_task(client, task_id):
    async with client.session.post(client.base_url + "/api/Task/getTaskState", json={"taskId": task_id},
                                   headers=HEADERS) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"code": 0, "msg": "ok", "data": None}


async def test_idempotency_key_over_255_characters_is_422(client, js):
    before = await sequences(js)
    resp = await client.session.post(client.base_url + "/api/v1/generate", json={"prompt": "x"},
                                     headers={**client.headers(), "Idempotency-Key": "k" * 256})
    assert resp.status == 422
    assert (await resp.json())["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await sequences(js) == before


async def test_files_serves_only_results_and_inputs(client):
    for key in ("stages/x/generate-0.png", "results/../inputs/x.png", "results/" + "a" * 300 + "/0.png"):
        async with client.session.get(f"{client.base_url}/files/{key}") as resp:
            assert resp.status == 404


async def test_hostile_websocket_frames_get_an_error_event_and_the_socket_stays(client):
    async with client.session.ws_connect(f"{client.base_url}/api/v1/ws", headers=client.headers()) as ws:
        for frame in (DEEP.decode(), '{"subscribe": [{"a": 1}]}', "[1]", '{"subscribe": 5}', "NaN"):
            await ws.send_str(frame)
            message = await ws.receive_json(timeout=10)
            assert message["event"] == "error", (frame[:40], message)
        await ws.send_json({"subscribe": ["no-such-task"]})
        message = await ws.receive_json(timeout=10)
        assert message["event"] == "error" and message["task_id"] == "no-such-task"
