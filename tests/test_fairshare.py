"""Fair sharing: with one worker, a key that queued many tasks does not make another key wait behind
all of them. The order the worker started tasks in is read back from the TASKS stream."""

import asyncio
import math

from nats.js.api import ConsumerConfig, DeliverPolicy

from schemas import subjects
from schemas.codec import decode_event
from services.config import load
from services.worker.fairshare import FairQueue

from .conftest import Client
from .stack import ALICE, BOB

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2}


async def sequences(js, event: str, task_ids: set[str]) -> dict[str, int]:
    """task id -> the TASKS stream sequence of its first `event`."""
    sub = await js.subscribe(subjects.task_event("*", event), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    found: dict[str, int] = {}
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            task_id = decode_event(msg.data).task_id
            if task_id in task_ids:
                found.setdefault(task_id, msg.metadata.sequence.stream)
            if msg.metadata.num_pending == 0:
                return found
    finally:
        await sub.unsubscribe()


async def test_a_key_flooding_the_queue_does_not_hold_back_another(client, js):
    async def submit(key: str) -> str:
        resp = await client.post_generate(BODY, key)
        assert resp.status == 200, await resp.text()
        return (await resp.json())["task_id"]

    flood = await asyncio.gather(*(submit(ALICE) for _ in range(20)))
    single = await submit(BOB)
    assert (await Client(client.session, client.base_url, BOB).wait(single, timeout=120))["status"] == "completed"
    for task_id in flood:  # what is left of alice's backlog need not run
        await client.session.post(f"{client.base_url}/api/v1/tasks/{task_id}/cancel", headers=client.headers())
    await asyncio.gather(*(client.wait(t, timeout=120) for t in flood))
    started = await sequences(js, "started", {*flood, single})
    bob_accepted = (await sequences(js, "accepted", {single}))[single]
    after_bob = [started.get(t, math.inf) for t in flood if started.get(t, math.inf) > bob_accepted]
    assert len(after_bob) >= 5  # alice still had a backlog when bob's task came
    assert sum(seq < started[single] for seq in after_bob) <= 1  # bob's started after at most one of it


def test_keys_take_turns_by_weight_and_a_returning_key_gets_no_credit():
    config = load(None, environ={}, api={"keys": [{"key": "heavy-key-0123", "id": "heavy", "quota": {"weight": 2}},
                                                  {"key": "light-key-0123", "id": "light"}]})
    queue = FairQueue(None, None, "jobs", "gpu", ConsumerConfig(), config, ring=lambda: None, on_max_deliveries=None)
    queue.waiting = {"heavy": 100, "light": 100}
    served = []
    for _ in range(90):
        served.append(queue.turns()[0])
        queue.served(served[-1], 1)
    assert served.count("heavy") == 60 and served.count("light") == 30
    queue.waiting["late"] = 1  # a key that waited for nothing until now
    assert queue.turns().index("late") <= 1  # next, or right after a key at the same pass
