"""Watching tasks live (SSE, WebSocket, NATS), cancelling them, and `diffbus generate`."""

import asyncio
import base64
import io
import json
import signal
import subprocess
import sys

import nats
from PIL import Image

from schemas import subjects
from schemas.codec import decode_event

from .conftest import decode_image
from .stack import ALICE, BOB

SLOW = {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 60}


async def sse(client, task_id: str, last_event_id: str | None = None, limit: int | None = None):
    """[(id, event, data)] from the task's SSE stream, until it ends (or `limit` events)."""
    headers = client.headers() | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    events, current = [], {"id": None, "event": None, "data": None}
    async with client.session.get(f"{client.base_url}/api/v1/tasks/{task_id}/events", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(("id:", "event:", "data:")):
                name, _, value = line.partition(":")
                current[name] = value.strip()
            elif not line and current["event"]:
                events.append((current["id"], current["event"], json.loads(current["data"])))
                current = {"id": None, "event": None, "data": None}
                if limit and len(events) >= limit:
                    break
    return events


async def wait_status(client, task_id: str, status: str, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.05)):
        if (await (await client.task(task_id)).json())["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} never became {status}")


async def test_sse_reports_every_step_in_order_then_the_result(client):
    task_id = await client.submit({"prompt": "a cat", "num_inference_steps": 8, "num_images": 2})
    events = await sse(client, task_id)
    names = [name for _, name, _ in events]
    assert names[0] == "state"
    assert names[-1] == "completed"
    progress = [data for _, name, data in events if name == "progress" and data["status"] == "processing"]
    assert [p["step"] for p in progress] == list(range(1, 9))
    assert all(p["total_steps"] == 8 for p in progress)
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(p["eta_s"] is not None and p["eta_s"] >= 0 for p in progress)
    final = events[-1][2]
    assert final["status"] == "completed" and len(final["result_urls"]) == 2
    assert decode_image(await client.download(final["result_urls"][0])).size == (64, 64)


async def test_preview_decodes_with_the_images_aspect_ratio(client):
    task_id = await client.submit({"prompt": "wide", "width": 128, "height": 64, "num_inference_steps": 6})
    previews = [data for _, name, data in await sse(client, task_id) if name == "progress" and data.get("preview")]
    assert previews
    img = Image.open(io.BytesIO(base64.b64decode(previews[0]["preview"])))
    assert img.format == "WEBP"
    assert img.size == (previews[0]["preview_width"], previews[0]["preview_height"])
    assert img.width == 2 * img.height


async def test_late_joiner_gets_current_state_first_and_resume_skips_what_it_saw(client):
    task_id = await client.submit({**SLOW, "num_inference_steps": 30})
    first = await sse(client, task_id, limit=6)  # state, then progress...
    assert first[0][1] == "state"
    last_id = [event_id for event_id, name, _ in first if name == "progress"][-1]
    resumed = await sse(client, task_id, last_event_id=last_id)
    assert resumed[0][1] == "state" and resumed[0][2]["status"] == "processing"
    seen = {event_id for event_id, name, _ in first if name == "progress"}
    again = [event_id for event_id, name, _ in resumed if name == "progress"]
    assert not seen & set(again)
    assert [int(i) for i in again] == sorted(int(i) for i in again)
    assert int(again[0]) > int(last_id)
    assert resumed[-1][1] == "completed"
    # After the end, reconnecting is told to stop (204), not replayed.
    resp = await client.session.get(f"{client.base_url}/api/v1/tasks/{task_id}/events",
                                    headers=client.headers() | {"Last-Event-ID": resumed[-1][0]})
    assert resp.status == 204


async def test_finished_task_streams_its_terminal_state_at_once(client):
    task_id = await client.submit({"prompt": "done", "num_inference_steps": 2})
    await client.wait(task_id)
    events = await sse(client, task_id)
    assert [name for _, name, _ in events] == ["completed"]


async def test_sse_watcher_websocket_watcher_and_nats_subscriber_see_the_same_end(client, stack):
    nc = await nats.connect(stack.nats_url)
    try:
        terminal = await nc.subscribe(subjects.task_event("*", "completed"))
        task_id = await client.submit({"prompt": "watched", "num_inference_steps": 12})
        async with client.session.ws_connect(f"{client.base_url}/api/v1/ws?api_key={ALICE}") as ws:
            await ws.send_json({"subscribe": [task_id], "previews": False})
            watcher = asyncio.create_task(sse(client, task_id))
            ws_events = []
            async for frame in ws:
                message = frame.json()
                ws_events.append(message)
                if message["event"] in ("completed", "failed", "cancelled"):
                    break
        sse_events = await watcher
        event = decode_event((await terminal.next_msg(timeout=10)).data)
        while event.task_id != task_id:
            event = decode_event((await terminal.next_msg(timeout=10)).data)
    finally:
        await nc.close()
    assert ws_events[-1]["data"] == sse_events[-1][2]
    assert ws_events[-1]["task_id"] == task_id and ws_events[-1]["event"] == "completed"
    keys = [url.split("/files/")[1] for url in sse_events[-1][2]["result_urls"] or [sse_events[-1][2]["result_url"]]]
    assert keys == [image.key for image in event.images]
    assert all("preview" not in m["data"] for m in ws_events if m["event"] == "progress")


async def test_websocket_can_carry_the_images_of_completed_tasks(client):
    async with client.session.ws_connect(f"{client.base_url}/api/v1/ws", headers=client.headers()) as ws:
        task_id = await client.submit({"prompt": "inline", "num_inference_steps": 2, "num_images": 2, "seed": 5})
        await ws.send_json({"subscribe": [task_id], "previews": False, "images": True})
        async for frame in ws:
            message = frame.json()
            if message["event"] in ("completed", "failed", "cancelled"):
                break
    done = message["data"]
    assert message["event"] == "completed" and len(done["images"]) == len(done["result_urls"]) == 2
    for inline, url in zip(done["images"], done["result_urls"]):
        assert base64.b64decode(inline) == await client.download(url)  # the same bytes as the download
        assert decode_image(base64.b64decode(inline)).size == (64, 64)


async def test_a_task_read_right_after_its_completed_event_is_completed(client):
    """The projector applies events in batches, but never answers from behind what it was sent."""
    async with client.session.ws_connect(f"{client.base_url}/api/v1/ws", headers=client.headers()) as ws:
        await ws.send_json({"subscribe": "all", "previews": False})
        await asyncio.sleep(0.2)
        for i in range(5):
            task_id = await client.submit({"prompt": f"read {i}", "num_inference_steps": 1})
            async for frame in ws:
                message = frame.json()
                if message["task_id"] == task_id and message["event"] == "completed":
                    break
            task = await (await client.task(task_id)).json()
            assert task["status"] == "completed" and task["result_url"]


async def test_websocket_all_follows_new_tasks_of_its_own_key_only(client):
    async with client.session.ws_connect(f"{client.base_url}/api/v1/ws",
                                         headers=client.headers()) as ws:
        await ws.send_json({"subscribe": "all", "previews": False})
        await asyncio.sleep(0.2)
        other = await client.post_generate({"prompt": "bob's", "num_inference_steps": 2}, key=BOB)
        other_id = (await other.json())["task_id"]
        mine = await client.submit({"prompt": "mine", "num_inference_steps": 2})
        seen = set()
        async for frame in ws:
            message = frame.json()
            seen.add(message["task_id"])
            if message["task_id"] == mine and message["event"] == "completed":
                break
    assert mine in seen and other_id not in seen


async def test_cancel_running_task_stops_it_and_the_worker_moves_on(client, js):
    task_id = await client.submit(SLOW)
    events = await sse(client, task_id, limit=4)
    assert any(name == "progress" and data["status"] == "processing" for _, name, data in events)
    resp = await client.session.post(f"{client.base_url}/api/v1/tasks/{task_id}/cancel", headers=client.headers())
    assert resp.status == 200
    await wait_status(client, task_id, "cancelled", timeout=10)
    task, [png] = await client.generate({"prompt": "next", "num_inference_steps": 2})
    assert decode_image(png).size == (64, 64)
    assert (await js.stream_info(subjects.JOBS)).state.messages == 0  # acked, never redelivered
    objects = [o.name for o in await (await js.object_store(subjects.IMAGES_BUCKET)).list()]
    assert not [o for o in objects if task_id in o]


async def test_cancel_pending_task_never_starts(client, js):
    busy = await client.submit(SLOW)
    await wait_status(client, busy, "processing")
    ahead = await client.submit({"prompt": "ahead", "num_inference_steps": 2})
    queued = await client.submit({"prompt": "queued", "num_inference_steps": 2})
    # While it waits, its stream says where it stands in the queue.
    state, position = await sse(client, queued, limit=2)
    assert state[1] == "state" and state[2]["status"] == "pending"
    assert position[1] == "progress" and position[2]["queue_position"] == 1
    resp = await client.session.post(f"{client.base_url}/api/v1/tasks/{queued}/cancel", headers=client.headers())
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    await client.session.post(f"{client.base_url}/api/v1/tasks/{busy}/cancel", headers=client.headers())
    after = await client.submit({"prompt": "after", "num_inference_steps": 2})
    assert (await client.wait(after))["status"] == "completed"
    assert (await client.wait(ahead))["status"] == "completed"
    assert (await client.wait(queued))["status"] == "cancelled"
    info = await js.stream_info(subjects.TASKS, subjects_filter=subjects.task_event(queued, "started"))
    assert not info.state.subjects
    assert (await js.stream_info(subjects.JOBS)).state.messages == 0


async def test_cancel_is_409_when_finished_and_404_for_another_key(client):
    task_id = await client.submit({"prompt": "x", "num_inference_steps": 2})
    url = f"{client.base_url}/api/v1/tasks/{task_id}/cancel"
    assert (await client.session.post(url, headers=client.headers(BOB))).status == 404
    await client.wait(task_id)
    resp = await client.session.post(url, headers=client.headers())
    assert resp.status == 409
    assert (await resp.json())["detail"] == "Task already completed"


def test_generate_cli_writes_the_images(stack, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "generate", "a lighthouse at dusk", "--steps", "6", "--seed", "7",
         "-n", "2", "-o", str(tmp_path / "out"), "--url", stack.base_url, "--api-key", ALICE],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 2 and [str(f) for f in files] == sorted(out.stdout.split())
    images = [decode_image(f.read_bytes()) for f in files]
    assert all(img.size == (64, 64) for img in images)
    assert "Seed: 7" in images[0].info["parameters"]


def test_generate_cli_fails_with_the_servers_message(stack, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "generate", "x", "--steps", "999", "--url", stack.base_url,
         "--api-key", ALICE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "422" in out.stderr and "num_inference_steps" in out.stderr


async def test_ctrl_c_in_generate_cli_cancels_the_task(client, stack):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "generate", "slow", "--steps", "60", "--width", "512",
        "--height", "512", "--url", stack.base_url, "--api-key", ALICE, stderr=asyncio.subprocess.PIPE)
    line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    task_id = line.split()[-1]
    await wait_status(client, task_id, "processing")
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 30) == 130
    await wait_status(client, task_id, "cancelled", timeout=10)
