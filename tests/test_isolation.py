"""Two keys, every route of every dialect that reads, writes, cancels, deletes, follows or lists a task:
no key ever touches another key's task, and a client-chosen task id is never reused (issue 16)."""

import hashlib
import time
import uuid

from schemas import subjects
from schemas.codec import encode
from schemas.events import Accepted, Cancelled
from schemas.jobs import Txt2Img

from .stack import ALICE, BOB, SDWM_SECRET

QUICK = {"prompt": "mine", "num_inference_steps": 2}


async def call(client, method: str, path: str, key: str, **kwargs) -> tuple[int, object]:
    headers = {"X-API-Key": key, "X-API-SECRET": SDWM_SECRET}
    async with client.session.request(method, client.base_url + path, headers=headers, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def test_another_keys_task_is_unreachable_through_every_dialect(client):
    alice_task, [alice_png] = await client.generate(QUICK)
    task_id, url = alice_task["task_id"], alice_task["result_url"]
    bob_id = (await (await client.post_generate(QUICK, key=BOB)).json())["task_id"]
    attempts = [  # (method, path, extra): each must fail for bob
        ("GET", f"/api/v1/tasks/{task_id}", {}),
        ("DELETE", f"/api/v1/tasks/{task_id}", {}),
        ("POST", f"/api/v1/tasks/{task_id}/cancel", {}),
        ("GET", f"/api/v1/tasks/{task_id}/events", {}),
        ("GET", f"/sdapi/v1/progress?task_id={task_id}", {}),
        ("POST", f"/sdapi/v1/interrupt?task_id={task_id}", {}),
        ("POST", f"/sdapi/v1/skip?task_id={task_id}", {}),
        ("GET", f"/tasks/{task_id}", {}),
        ("POST", "/sdapi/v1/txt2img", {"json": {"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                "task_id": task_id}}),
        ("POST", "/sdapi/v1/txt2img", {"json": {"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                "force_task_id": task_id}}),
    ]
    for method, path, extra in attempts:
        status, body = await call(client, method, path, BOB, **extra)
        assert status in (404, 409), (method, path, status, body)

    status, listed = await call(client, "GET", "/api/v1/tasks?page_size=100", BOB)
    assert status == 200 and task_id not in {t["task_id"] for t in listed["tasks"]}
    status, lists = await call(client, "GET", "/tasks?page_size=100", BOB)
    assert status == 200 and task_id not in {t["task_id"] for found in lists.values() for t in found}
    status, stopped = await call(client, "POST", "/v1/engine/control?action=stop", BOB)
    assert status == 200 and task_id not in stopped["task_ids"]
    status, progress = await call(client, "GET", "/sdapi/v1/progress", BOB)  # bob's latest: never alice's
    assert status == 200 and progress["state"].get("task_id") != task_id
    async with client.session.ws_connect(f"{client.base_url}/api/v1/ws?api_key={BOB}") as ws:
        await ws.send_json({"subscribe": [task_id]})
        message = await ws.receive_json(timeout=10)
        assert message["event"] == "error" and message["task_id"] == task_id

    # sd_work_manager's secret stands for alice (tests/stack.py): bob's task number is no task to it.
    status, bob_object = await call(client, "GET", f"/tasks/{bob_id}", BOB)
    status, state = await call(client, "POST", "/api/Task/getTaskState", BOB, json={"taskId": bob_object["id"]})
    assert status == 200 and state["data"] is None

    again = await client.wait(task_id)  # alice's task: untouched, same images
    assert again["status"] == "completed" and again["result_url"] == url
    assert await client.download(url) == alice_png
    assert task_id not in url  # result URLs are random capabilities, not named by the task id
    assert (await call(client, "GET", f"/files/stages/{task_id}/generate-0.png", BOB))[0] == 404


async def test_the_same_idempotency_key_is_two_tasks_for_two_keys(client):
    key = {"Idempotency-Key": "shared-" + uuid.uuid4().hex}
    mine = await client.session.post(client.base_url + "/api/v1/generate", json=QUICK,
                                     headers={**client.headers(), **key})
    theirs = await client.session.post(client.base_url + "/api/v1/generate", json=QUICK,
                                       headers={**client.headers(BOB), **key})
    again = await client.session.post(client.base_url + "/api/v1/generate", json=QUICK,
                                      headers={**client.headers(), **key})
    mine, theirs, again = [(await r.json())["task_id"] for r in (mine, theirs, again)]
    assert mine == again != theirs
    assert (await client.task(mine, key=BOB)).status == 404
    assert (await client.task(theirs)).status == 404


async def test_a_client_chosen_id_is_never_reused_even_after_the_dedupe_window(client, js):
    """A task accepted long ago (its message id no longer deduplicated, simulated by publishing it
    under another message id): its id cannot be chosen again, by its owner or anyone else."""
    victim = "victim-" + uuid.uuid4().hex[:12]
    owner = "key-" + hashlib.sha256(ALICE.encode()).hexdigest()[:16]
    spec = Txt2Img(model="demo", prompt="old", width=64, height=64, steps=2, guidance_scale=7, seed=1)
    await js.publish(subjects.task_event(victim, "accepted"),
                     encode(Accepted(task_id=victim, at=time.time() - 86400, owner=owner, spec=spec)),
                     headers={"Nats-Msg-Id": "long-ago-" + victim})
    before = (await js.stream_info(subjects.JOBS)).state.last_seq
    for key in (BOB, ALICE):
        for field in ("task_id", "force_task_id"):
            status, body = await call(client, "POST", "/sdapi/v1/txt2img", key,
                                      json={"prompt": "x", "steps": 2, "width": 64, "height": 64, field: victim})
            assert status == 409, body
            assert body["error"] and "taken" in body["detail"]
    info = await js.stream_info(subjects.TASKS, subjects_filter=subjects.task_event(victim, ">"))
    assert info.state.subjects == {subjects.task_event(victim, "accepted"): 1}
    assert (await js.stream_info(subjects.JOBS)).state.last_seq == before  # nothing queued
    # the long-ago task ended long ago: no pending task is left to count in later tests' queue positions
    await js.publish(subjects.task_event(victim, "cancelled"), encode(Cancelled(task_id=victim, at=time.time() - 86000)))


async def test_a_client_chosen_id_taken_within_the_dedupe_window_is_409_for_another_key(client):
    task_id = "mine-" + uuid.uuid4().hex[:12]
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "task_id": task_id}
    status, answer = await call(client, "POST", "/sdapi/v1/txt2img", ALICE, json=body)
    assert status == 200, answer
    status, answer = await call(client, "POST", "/sdapi/v1/txt2img", BOB, json=body)
    assert status == 409, answer
    status, progress = await call(client, "GET", f"/sdapi/v1/progress?task_id={task_id}", BOB)
    assert status == 404
