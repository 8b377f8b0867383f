"""Bad requests get a clear 4xx in the dialect's shape and change nothing: no job, no event."""

import base64

import pytest

from schemas import subjects

from .conftest import png_data_uri
from .stack import ADMIN, BOB


async def sequences(js) -> tuple[int, int]:
    jobs = await js.stream_info(subjects.JOBS)
    tasks = await js.stream_info(subjects.TASKS)
    return jobs.state.last_seq, tasks.state.last_seq


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "width": 100}, "width"),
    ({"prompt": "x", "height": 4096}, "height"),
    ({"prompt": "x", "num_inference_steps": 61}, "num_inference_steps"),
    ({"prompt": "x", "num_images": 11}, "num_images"),
    ({"prompt": "x", "num_images": 0}, "num_images"),
    ({"prompt": "x", "scheduler": "FancyScheduler"}, "scheduler"),
    ({"prompt": "x", "output_format": "gif"}, "output_format"),
    ({"prompt": "x", "strength": 1.5}, "strength"),
    ({"prompt": "x", "callback_url": "ftp://example.com/hook"}, "callback_url"),
    ({"negative_prompt": "x"}, "prompt"),
    ({"prompt": "x", "init_image": "data:image/png;base64,bm90IGFuIGltYWdl"}, "init_image"),
    ({"prompt": "x", "init_image": "data:image/png;base64,%%%"}, "init_image"),
    ({"prompt": "x", "init_image": png_data_uri(2056, 64)}, "init_image"),
    ({"prompt": "x", "init_image": png_data_uri(64, 64), "strength": 0.1, "num_inference_steps": 5},
     "strength"),
])
async def test_invalid_field_is_422_naming_it_and_queues_nothing(client, js, body, field):
    before = await sequences(js)
    resp = await client.post_generate(body)
    assert resp.status == 422
    detail = (await resp.json())["detail"]
    assert ["body", field] in [d["loc"] for d in detail], detail
    assert all(d["msg"] and d["type"] for d in detail)
    assert await sequences(js) == before


async def test_truncated_png_is_rejected(client, js):
    data = base64.b64decode(png_data_uri(64, 64).split(",", 1)[1])
    truncated = "data:image/png;base64," + base64.b64encode(data[: len(data) // 2]).decode()
    before = await sequences(js)
    resp = await client.post_generate({"prompt": "x", "init_image": truncated})
    assert resp.status == 422
    assert await sequences(js) == before


async def test_body_that_is_not_json_is_422(client, js):
    before = await sequences(js)
    resp = await client.session.post(f"{client.base_url}/api/v1/generate", data=b"{not json",
                                      headers=client.headers())
    assert resp.status == 422
    assert (await resp.json())["detail"][0]["loc"] == ["body"]
    assert await sequences(js) == before


@pytest.mark.parametrize("key", [None, "", "wrong-key-0123456789"])
async def test_missing_or_wrong_key_is_401(client, js, key):
    before = await sequences(js)
    headers = {} if key is None else {"X-API-Key": key}
    resp = await client.session.post(f"{client.base_url}/api/v1/generate", json={"prompt": "x"},
                                     headers=headers)
    assert resp.status == 401
    assert "detail" in await resp.json()
    resp = await client.session.get(f"{client.base_url}/api/v1/tasks/whatever", headers=headers)
    assert resp.status == 401
    assert await sequences(js) == before


async def test_unknown_task_is_404(client):
    for task_id in ("6a4c6c0e-2c4e-4a8e-9d1b-000000000000", "not.a.task", "x" * 200):
        resp = await client.task(task_id)
        assert resp.status == 404
        assert (await resp.json()) == {"detail": "Task not found"}


async def test_health_needs_no_key(client):
    for path in ("/health", "/api/health"):
        resp = await client.session.get(client.base_url + path)
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "ok" and body["model_loaded"] is True
        assert set(body["dependencies"]) == {"nats", "storage", "projector", "workers"}


async def test_tasks_belong_to_the_key_that_made_them(client):
    task_id = await client.submit({"prompt": "mine", "num_inference_steps": 2})
    assert (await client.task(task_id, key=BOB)).status == 404
    resp = await client.task(task_id, key=ADMIN)
    assert resp.status == 200
    assert (await resp.json())["task_id"] == task_id
    assert (await client.wait(task_id))["status"] == "completed"


async def test_idempotency_key_gives_one_task(client, js):
    body = {"prompt": "once", "num_inference_steps": 2}
    headers = {**client.headers(), "Idempotency-Key": "order-42"}
    url = f"{client.base_url}/api/v1/generate"
    first = await (await client.session.post(url, json=body, headers=headers)).json()
    jobs_after_first = (await js.stream_info(subjects.JOBS)).state.last_seq
    second = await (await client.session.post(url, json=body, headers=headers)).json()
    assert first["task_id"] == second["task_id"]
    assert (await js.stream_info(subjects.JOBS)).state.last_seq == jobs_after_first
    assert (await client.wait(first["task_id"]))["status"] == "completed"
