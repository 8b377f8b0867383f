"""Upscaling through the upscaler service, on its own and as the middle of a hires fix."""

import asyncio
import signal
import subprocess
import sys

import nats
import pytest

from schemas import subjects
from schemas.codec import decode, decode_event
from schemas.jobs import Job

from .conftest import decode_image, png_data_uri
from .stack import Stack
from .test_live import sse
from .test_validation import sequences


async def upscale(client, body: dict) -> tuple[dict, bytes]:
    resp = await client.session.post(f"{client.base_url}/api/v1/upscale", json=body, headers=client.headers())
    assert resp.status == 200, await resp.text()
    task = await client.wait((await resp.json())["task_id"])
    assert task["status"] == "completed", task
    return task, await client.download(task["result_url"])


@pytest.mark.parametrize("upscaler", ["R-ESRGAN 4x+", "compact-pth", "ESRGAN_4x", "Lanczos", "Nearest"])
async def test_each_upscaler_gives_the_exact_size(client, upscaler):
    image = png_data_uri(32, 32)
    for scale, size in ((4, (128, 128)), (2, (64, 64)), (1.5, (48, 48))):
        _, png = await upscale(client, {"image": image, "scale": scale, "upscaler": upscaler})
        assert decode_image(png).size == size, (upscaler, scale)


async def test_model_asked_for_more_than_its_scale_runs_twice(client):
    _, png = await upscale(client, {"image": png_data_uri(20, 12), "scale": 8, "upscaler": "R-ESRGAN 4x+",
                                    "output_format": "jpg"})
    img = decode_image(png)
    assert img.size == (160, 96) and img.format == "JPEG"


@pytest.mark.parametrize("body, field", [
    ({"image": png_data_uri(32, 32), "upscaler": "SuperRes 9000"}, "upscaler"),
    ({"image": png_data_uri(32, 32), "upscaler": "Latent"}, "upscaler"),
    ({"image": png_data_uri(32, 32), "scale": 0}, "scale"),
    ({"image": png_data_uri(32, 32), "scale": 20}, "scale"),
    ({"image": "data:image/png;base64,aGVsbG8="}, "image"),
    ({"scale": 2}, "image"),
])
async def test_bad_upscale_request_is_422_and_queues_nothing(client, js, body, field):
    before = await sequences(js)
    resp = await client.session.post(f"{client.base_url}/api/v1/upscale", json=body, headers=client.headers())
    assert resp.status == 422
    assert ["body", field] in [d["loc"] for d in (await resp.json())["detail"]]
    assert await sequences(js) == before


async def test_unknown_hires_upscaler_is_422(client, js):
    before = await sequences(js)
    resp = await client.post_generate({"prompt": "x", "enable_hr": True, "hr_upscaler": "Magic"})
    assert resp.status == 422
    assert await sequences(js) == before


async def test_hires_fix_runs_three_stages_across_workers(client, stack):
    nc = await nats.connect(stack.nats_url)
    try:
        upscale_jobs = await nc.subscribe("jobs.upscale.>")
        started = await nc.subscribe(subjects.task_event("*", "started"))
        task_id = await client.submit({"prompt": "castle", "enable_hr": True, "hr_scale": 2, "seed": 3,
                                       "hr_upscaler": "R-ESRGAN 4x+", "num_inference_steps": 4,
                                       "hr_second_pass_steps": 4, "denoising_strength": 0.5})
        events = await sse(client, task_id)
        stages = []
        while len(stages) < 3:
            event = decode_event((await started.next_msg(timeout=10)).data)
            if event.task_id == task_id:
                stages.append((event.stage_name, event.worker.split("-")[0]))
        job = decode((await upscale_jobs.next_msg(timeout=5)).data, Job)
    finally:
        await nc.close()
    assert stages == [("generate", "gpu"), ("upscale", "upscale"), ("refine", "gpu")]
    assert job.task_id == task_id and job.stage_name == "upscale"
    final = events[-1][2]
    assert events[-1][1] == "completed"
    png = decode_image(await client.download(final["result_url"]))
    assert png.size == (128, 128)
    assert "Hires upscaler: R-ESRGAN 4x+" in png.info["parameters"]
    fractions = [data["fraction"] for _, name, data in events if name == "progress" and data["status"] == "processing"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {data["stage_name"] for _, name, data in events if name == "progress"} >= {"generate", "upscale", "refine"}


async def test_latent_hires_fix_stays_on_the_gpu_worker(client):
    task, [png] = await client.generate({"prompt": "castle", "enable_hr": True, "hr_scale": 1.5,
                                         "num_inference_steps": 4})
    assert decode_image(png).size == (96, 96)


async def test_upscaler_killed_mid_hires_fix_task_completes_after_restart(client, stack):
    upscaler = next(p for p in stack.procs if p.args[3] == "upscaler" and p.poll() is None)
    nc = await nats.connect(stack.nats_url)
    try:
        started = await nc.subscribe(subjects.task_event("*", "started"))
        task_id = await client.submit({"prompt": "castle", "enable_hr": True, "hr_upscaler": "ESRGAN_4x",
                                       "num_inference_steps": 6, "hr_second_pass_steps": 2})
        while decode_event((await started.next_msg(timeout=10)).data).task_id != task_id:
            pass
        Stack.stop(upscaler, signal.SIGKILL)  # the hires fix is under way; its upscale stage has no worker
        await asyncio.sleep(1.5)
        assert (await (await client.task(task_id)).json())["status"] == "processing"
    finally:
        await nc.close()
        stack.start("upscaler")
    task = await client.wait(task_id, timeout=60)
    assert task["status"] == "completed"
    assert decode_image(await client.download(task["result_url"])).size == (128, 128)


def test_tiled_upscale_matches_untiled_away_from_the_borders(upscaler_models):
    """Run in a child process: spandrel and torch stay out of the test process."""
    script = f"""
import torch
from services.upscaler.compat import import_spandrel
from services.upscaler.tiling import upscale_tiled
spandrel = import_spandrel()
model = spandrel.ModelLoader().load_from_file({str(upscaler_models / "compact-x4.safetensors")!r}).eval()
run = lambda t: model(t)
torch.manual_seed(0)
image = torch.rand(1, 3, 80, 72)
with torch.inference_mode():
    whole = run(image)
    tiled = upscale_tiled(run, image, 4, tile=32, overlap=12)
assert tiled.shape == whole.shape == (1, 3, 320, 288), tiled.shape
inner = (slice(None), slice(None), slice(16, -16), slice(16, -16))
print(float((tiled - whole)[inner].abs().max()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 0.02
