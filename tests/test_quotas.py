"""Per-key quotas: each limit refused with 429 and Retry-After in every dialect's own error shape, with
nothing queued; limits per key and the defaults for the others; admin keys exempt; /metrics counts.
No worker runs, so submitted tasks stay waiting."""

import asyncio
import time

import aiohttp
import nats
import pytest

from schemas.events import Started
from services import bus
from services.api import quotas

from .conftest import Client, health
from .stack import ADMIN, ALICE, BOB, SDWM_SECRET, Stack, wait_until

CAROL = "carol-key-0123456789"
DAVE = "dave-key-0123456789"
NATIVE = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory, demo_model):
    s = Stack(tmp_path_factory.mktemp("quotas"), demo_model, quotas={"max_queued": 1, "retry_after_s": 7},
              api={"keys": [
                  {"key": ALICE, "id": "alice", "quota": {"max_queued": 2}},  # sd_work_manager's owner too
                  {"key": BOB, "id": "bob", "quota": {"per_minute": 2, "max_queued": None}},
                  {"key": CAROL, "id": "carol", "quota": {"max_running": 1, "max_queued": None}},
                  {"key": DAVE, "id": "dave"},  # the defaults
                  {"key": ADMIN, "id": "ops", "admin": True}]})
    s.start_nats()
    s.start("projector")
    s.start("api")
    try:
        wait_until(lambda: health(s.base_url), 60, "the api", s)
        yield s
        assert not s.crashed(), s.logs()
    finally:
        s.close()


@pytest.fixture
async def qclient(quota_stack):
    async with aiohttp.ClientSession() as session:
        yield Client(session, quota_stack.base_url)


async def post(client: Client, path: str, body: dict, headers: dict) -> tuple[int, dict, dict]:
    async with client.session.post(client.base_url + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def native(client: Client, key: str) -> tuple[int, dict, dict]:
    return await post(client, "/api/v1/generate", NATIVE, {"X-API-Key": key})


async def total(client: Client, key: str, status: str = "pending") -> int:
    async with client.session.get(f"{client.base_url}/api/v1/tasks?status={status}",
                                  headers={"X-API-Key": key}) as resp:
        return (await resp.json())["total"]


async def test_max_queued_is_429_with_retry_after_in_every_dialect(qclient):
    for _ in range(2):
        assert (await native(qclient, ALICE))[0] == 200
    status, body, headers = await native(qclient, ALICE)
    assert status == 429 and headers["Retry-After"] == "7"
    assert "2 of this key's tasks are waiting" in body["detail"]
    status, body, headers = await post(qclient, "/sdapi/v1/txt2img", {"prompt": "x", "width": 64, "height": 64,
                                                                      "steps": 2}, {"X-API-Key": ALICE})
    assert status == 429 and headers["Retry-After"] == "7"
    assert body["error"] == "HTTPException" and "Quota reached" in body["errors"] and body["body"] == ""
    status, body, headers = await post(qclient, "/v1/engine/generate/", {
        "prompt": "x", "aspect_ratios_selection": "64*64", "overwrite_step": 2, "async_process": True},
        {"X-API-Key": ALICE})
    assert status == 429 and headers["Retry-After"] == "7" and "Quota reached" in body["detail"]
    status, body, headers = await post(qclient, "/api/Task/submitTxt2ImgTask", {
        "width": 64, "height": 64, "prompts": "x", "negativePrompts": "", "count": 1, "steps": 2, "scale": 7},
        {"X-API-SECRET": SDWM_SECRET})
    assert status == 429 and headers["Retry-After"] == "7"
    assert body["code"] < 0 and "Quota reached" in body["msg"] and body["data"] is None
    assert await total(qclient, ALICE) == 2  # nothing more was queued


async def test_per_minute_counts_accepted_submits(qclient):
    for _ in range(2):
        assert (await native(qclient, BOB))[0] == 200
    status, body, headers = await native(qclient, BOB)
    assert status == 429 and "at most 2 submits a minute" in body["detail"]
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert await total(qclient, BOB) == 2


async def test_max_running_refuses_while_that_many_run(qclient, quota_stack):
    status, body, _ = await native(qclient, CAROL)
    assert status == 200
    assert (await native(qclient, CAROL))[0] == 200  # one waiting is no limit of carol's
    nc = await nats.connect(quota_stack.nats_url)
    try:  # a worker starts carol's first task
        await bus.publish_event(nc.jetstream(), Started(task_id=body["task_id"], at=time.time(), worker="w", attempt=1))
    finally:
        await nc.close()
    await asyncio.sleep(quotas.COUNT_TTL_S)  # the API reads a key's counts at most this often
    status, body, headers = await native(qclient, CAROL)
    assert status == 429 and "1 of this key's tasks are running" in body["detail"] and headers["Retry-After"] == "7"
    assert await total(qclient, CAROL, "pending,processing") == 2


async def test_defaults_apply_to_keys_without_a_quota_and_admins_have_none(qclient):
    assert (await native(qclient, DAVE))[0] == 200
    assert (await native(qclient, DAVE))[0] == 429  # quotas.max_queued: 1
    for _ in range(3):
        assert (await native(qclient, ADMIN))[0] == 200


async def test_metrics_show_each_keys_queued_running_and_refused(qclient):
    while (await native(qclient, ALICE))[0] == 200:  # up to alice's max_queued, and one refused
        pass
    async with qclient.session.get(f"{qclient.base_url}/metrics") as resp:
        text = await resp.text()
    assert 'diffbus_key_tasks_queued{owner="alice"} 2.0' in text
    assert 'diffbus_key_tasks_running{owner="alice"} 0.0' in text
    assert 'diffbus_key_tasks_refused_total{limit="max_queued",owner="alice"}' in text
