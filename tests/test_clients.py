"""The clients people run, replayed over HTTP against the real stack: the request sequences of
SillyTavern's Stable Diffusion extension (src/endpoints/stable-diffusion.js, its default settings),
Open WebUI's automatic1111 image backend and webuiapi (mix1009/sdwebuiapi, defaults untouched), with
their auth style and the response fields they read. Only host, key, size and steps are changed."""

import asyncio
import base64
import json

import pytest

from .conftest import Client, decode_image
from .stack import ALICE

BASIC = {"Authorization": "Basic " + base64.b64encode(f"sillytavern:{ALICE}".encode()).decode()}
SMALL = {"width": 64, "height": 64, "steps": 2}

# The reply fields of each read-only route, from A1111 1.10's modules/api/models.py.
A1111_LIST_FIELDS = {
    # A1111's six, and diffbus's family and default size beside them (clients read title / model_name)
    "sd-models": {"title", "model_name", "hash", "sha256", "filename", "config", "family", "width", "height"},
    "samplers": {"name", "aliases", "options"},
    "schedulers": {"name", "label", "aliases", "default_rho", "need_inner_model"},
    "upscalers": {"name", "model_name", "model_path", "model_url", "scale"},
    "latent-upscale-modes": {"name"},
    "sd-vae": {"model_name", "filename"},
    "sd-modules": {"model_name", "filename"},
    "hypernetworks": {"name", "path"},
    "face-restorers": {"name", "cmd_dir"},
    "realesrgan-models": {"name", "path", "scale"},
    "prompt-styles": {"name", "prompt", "negative_prompt"},
    "loras": {"name", "alias", "path", "metadata"},
    "script-info": {"name", "is_alwayson", "is_img2img", "args"},
    "extensions": {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"},
}
A1111_OBJECT_FIELDS = {"embeddings": {"loaded", "skipped"}, "memory": {"ram", "cuda"},
                       "scripts": {"txt2img", "img2img"}}


async def call(client, method: str, path: str, body=None, headers=None):
    async with client.session.request(method, f"{client.base_url}/sdapi/v1/{path}", json=body,
                                      headers=headers or BASIC) as resp:
        return resp.status, await resp.json()


async def idle(client) -> bool:
    """SillyTavern's wait after a model switch: progress 0 and job_count 0."""
    _, state = await call(client, "GET", "progress")
    return state["progress"] == 0.0 and state["state"]["job_count"] == 0


async def test_sillytavern_settings_model_switch_and_generate(client):
    assert (await call(client, "GET", "options"))[0] == 200  # its ping
    (s1, upscalers), (s2, latent) = await asyncio.gather(call(client, "GET", "upscalers"),
                                                         call(client, "GET", "latent-upscale-modes"))
    assert s1 == s2 == 200
    names = [u["name"] for u in upscalers]
    names[1:1] = [m["name"] for m in latent]  # "0 = None, then Latent Upscalers, then Upscalers"
    assert names[:2] == ["None", "Latent"] and "R-ESRGAN 4x+" in names
    vaes = [r for r in await asyncio.gather(call(client, "GET", "sd-vae"), call(client, "GET", "sd-modules"))
            if r[0] == 200]
    assert vaes and isinstance(vaes[0][1], list)
    samplers = [s["name"] for s in (await call(client, "GET", "samplers"))[1]]
    schedulers = [s["name"] for s in (await call(client, "GET", "schedulers"))[1]]
    assert "DDIM" in samplers and "normal" in schedulers  # its defaults, offered back to it
    models = [m["title"] for m in (await call(client, "GET", "sd-models"))[1]]
    assert (await call(client, "GET", "options"))[1]["sd_model_checkpoint"] in models
    assert (await call(client, "POST", "options", {"sd_model_checkpoint": models[0]}))[0] == 200
    assert await idle(client)  # no 20 s stall after the switch
    body = {"url": "http://127.0.0.1:7860", "auth": f"sillytavern:{ALICE}", "prompt": "a tavern at dusk",
            "negative_prompt": "lowres", "sampler_name": "DDIM", "scheduler": "normal", "cfg_scale": 7,
            "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2.0,
            "hr_additional_modules": [], "denoising_strength": 0.7, "hr_second_pass_steps": 0,
            "override_settings": {"CLIP_stop_at_last_layers": 1}, "override_settings_restore_afterwards": True,
            "clip_skip": 1, "save_images": True, "send_images": True, "do_not_save_grid": False,
            "do_not_save_samples": False, **SMALL}
    status, data = await call(client, "POST", "txt2img", body)
    assert status == 200, data
    assert decode_image(base64.b64decode(data["images"][0])).size == (64, 64)
    assert json.loads(data["info"])["extra_generation_params"]["Schedule type"] == "Normal"
    assert await idle(client)  # the next model switch does not wait either


async def test_open_webui_automatic1111_backend(client):
    status, options = await call(client, "GET", "options")  # its connection check
    assert status == 200 and "sd_model_checkpoint" in options
    models = [{"id": m["title"], "name": m["model_name"]} for m in (await call(client, "GET", "sd-models"))[1]]
    if options["sd_model_checkpoint"] != models[0]["id"]:
        assert (await call(client, "POST", "options", {"sd_model_checkpoint": models[0]["id"]}))[0] == 200
    body = {"prompt": "a red fox", "batch_size": 1, "width": 64, "height": 64, "steps": 2,
            "negative_prompt": "", "cfg_scale": 7.0, "sampler_name": None, "scheduler": None}
    status, res = await call(client, "POST", "txt2img", body)
    assert status == 200, res
    info = json.loads(res["info"])
    assert len(res["images"]) == 1 and info["seed"] == info["all_seeds"][0]


async def test_webuiapi_defaults(client):
    status, scripts = await call(client, "GET", "scripts")  # WebUIApi() checks for ControlNet / ADetailer
    assert status == 200 and "controlnet m2m" not in scripts["txt2img"]
    payload = {"enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
               "hr_resize_x": 0, "hr_resize_y": 0, "denoising_strength": 0.7, "firstphase_width": 0,
               "firstphase_height": 0, "prompt": "a cute cat", "styles": [], "seed": 5, "subseed": -1,
               "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0, "batch_size": 1,
               "n_iter": 1, "cfg_scale": 7.0, "restore_faces": False, "tiling": False,
               "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0,
               "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
               "override_settings_restore_afterwards": True, "sampler_name": "Euler a", "sampler_index": "Euler a",
               "scheduler": "automatic", "script_name": None, "script_args": [], "send_images": True,
               "save_images": False, "alwayson_scripts": {}, **SMALL}
    status, r = await call(client, "POST", "txt2img", payload)
    assert status == 200, r
    assert r["parameters"] == payload and json.loads(r["info"])["all_seeds"] == [5]
    _, options = await call(client, "GET", "options")  # util: read every option, post them all back
    assert (await call(client, "POST", "options", options)) == (200, None)
    assert await call(client, "POST", "interrupt") == (200, {})  # as A1111: {} and null
    assert await call(client, "POST", "skip") == (200, None)


async def test_every_read_route_answers_in_a1111_shape(client):
    for path, fields in A1111_LIST_FIELDS.items():
        status, items = await call(client, "GET", path)
        assert status == 200 and isinstance(items, list), path
        assert all(set(item) == fields for item in items), (path, items[:1])
    for path, fields in A1111_OBJECT_FIELDS.items():
        status, value = await call(client, "GET", path)
        assert status == 200 and set(value) == fields, path
    assert (await call(client, "GET", "memory"))[1]["ram"]["total"] > 0
    styles = (await call(client, "GET", "prompt-styles"))[1]
    assert "Fooocus Enhance" in {s["name"] for s in styles}
    flags = (await call(client, "GET", "cmd-flags"))[1]
    assert flags["api"] is True
    for path in ("refresh-vae", "refresh-embeddings", "refresh-checkpoints", "unload-checkpoint"):
        assert (await call(client, "POST", path))[0] == 200, path


async def test_a_prompt_style_applies_as_in_a1111(client):
    status, r = await call(client, "POST", "txt2img", {"prompt": "a boat", "styles": ["Fooocus Sharp"], **SMALL})
    assert status == 200, r
    assert json.loads(r["info"])["prompt"] == "a boat, crisp, clear lines, fine detail, sharp"
    status, r = await call(client, "POST", "txt2img", {"prompt": "a boat", "styles": ["Nope"], **SMALL})
    assert status == 422 and "styles" in r["errors"]


@pytest.mark.parametrize("body, field", [({"steps": 100000}, "steps"), ({"cfg_scale": 1000}, "cfg_scale"),
                                         ({"batch_size": 50}, "batch_size")])
async def test_an_a1111_error_names_the_a1111_field(client, body, field):
    status, r = await call(client, "POST", "txt2img", {"prompt": "x", "width": 64, "height": 64, **body})
    assert status == 422 and r["error"] == "RequestValidationError"
    assert [d["loc"][-1] for d in r["detail"]] == [field] and "num_inference_steps" not in r["errors"]


async def test_extra_batch_images(client):
    from .test_breadth import data_uri, pattern_png

    body = {"resize_mode": 0, "upscaling_resize": 2, "upscaler_1": "Lanczos",
            "imageList": [{"data": data_uri(pattern_png(16, 8)), "name": "a.png"},
                          {"data": data_uri(pattern_png(8, 8)), "name": "b.png"}]}
    status, r = await call(client, "POST", "extra-batch-images", body)
    assert status == 200, r
    assert [decode_image(base64.b64decode(i)).size for i in r["images"]] == [(32, 16), (16, 16)]
    status, r = await call(client, "POST", "extra-batch-images", {**body, "gfpgan_visibility": 1})
    assert status == 422 and "gfpgan_visibility" in r["errors"]


# FooocusAPI (mrhan1993/FooocusAPI) clients: example.html streams with async_process left on; images
# may be URLs; "None" is its default for an image field.
FOOOCUS = {"aspect_ratios_selection": "64*64", "overwrite_step": 2}


async def fooocus(client, body: dict, accept: str | None = None):
    headers = {"X-API-Key": ALICE, **({"Accept": accept} if accept else {})}
    return await client.session.post(f"{client.base_url}/v1/engine/generate/", json={**FOOOCUS, **body},
                                      headers=headers)


@pytest.fixture
async def image_host():
    """A real web server with one PNG (and a 404), on loopback: allowed by the stack's allowed_networks."""
    from aiohttp import web

    from services.cli.embedded import free_port

    from .test_breadth import pattern_png

    async def cat(_):
        return web.Response(body=pattern_png(72, 64), content_type="image/png")

    app = web.Application()
    app.router.add_get("/cat.png", cat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_fooocus_stream_output_wins_over_async_process(client):
    resp = await fooocus(client, {"prompt": "a lamp", "stream_output": True, "async_process": True,
                                  "uov_input_image": "None", "inpaint_input_image": "", "inpaint_mask_image_upload": "None"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    lines = [json.loads(raw.decode()[6:]) for raw in [line async for line in resp.content]
             if raw.startswith(b"data: {")]
    assert lines[-1]["message"] == "Finished" and len(lines[-1]["images"]) == 1


async def test_fooocus_example_html_reads_progress_then_the_images(client):
    """FooocusAPI's docs/example.html as its script runs: the body it sends (its defaults), and its
    reader: each chunk appended to a buffer, the text from the first `{` to the last `}` parsed; it
    shows `progress` and `message`, and takes `images` when progress is 100."""
    body = {"prompt": "a cute cat", "negative_prompt": "", "async_process": True, "stream_output": True,
            "image_number": 1, "performance_selection": "Speed"}
    resp = await fooocus(client, body)
    assert resp.status == 200
    buffer, seen, images = "", [], None
    async for chunk in resp.content.iter_any():
        buffer += chunk.decode()
        start, end = buffer.find("{"), buffer.rfind("}")
        if start != -1 and end != -1 and start < end:
            data = json.loads(buffer[start:end + 1])  # JSON.parse: two messages in one chunk would throw
            buffer = buffer[end + 1:]
            seen.append((data["progress"], data["message"]))
            if data["progress"] == 100:
                images = data["images"]
    assert seen[-1] == (100, "Finished") and seen == sorted(seen, key=lambda s: s[0]), seen
    assert len(images) == 1 and decode_image(await (await client.session.get(images[0])).read()).size == (64, 64)


@pytest.mark.parametrize("accept, content_type", [("image/webp", "image/webp"), ("image/jpeg", "image/jpeg"),
                                                  ("text/html, image/png;q=0.9", "image/png")])
async def test_fooocus_accept_picks_the_binary_format(client, accept, content_type):
    resp = await fooocus(client, {"prompt": "a cup", "output_format": "png"}, accept=accept)
    assert resp.status == 200 and resp.headers["Content-Type"] == content_type
    assert decode_image(await resp.read()).size == (64, 64)


async def test_fooocus_image_urls_are_fetched_or_refused_by_name(client, image_host):
    resp = await fooocus(client, {"prompt": "x", "uov_method": "Vary (Subtle)",
                                  "uov_input_image": f"{image_host}/cat.png"})
    assert resp.status == 200, await resp.text()
    assert decode_image(await resp.read()).size == (72, 64)
    for url, words in ((f"{image_host}/missing.png", "404"), ("http://169.254.169.254/latest/x.png", "refused"),
                       ("http://10.1.2.3/x.png", "refused")):
        resp = await fooocus(client, {"prompt": "x", "uov_method": "Vary (Subtle)", "uov_input_image": url,
                                      "async_process": True})
        detail = (await resp.json())["detail"]
        assert resp.status == 422 and detail[0]["loc"][-1] == "uov_input_image" and words in detail[0]["msg"]


async def test_a1111_init_images_may_be_urls_as_with_api_enable_requests(client, image_host):
    body = {"prompt": "x", "init_images": [f"{image_host}/cat.png"], "denoising_strength": 0.6, **SMALL}
    status, r = await call(client, "POST", "img2img", body)
    assert status == 200, r
    assert decode_image(base64.b64decode(r["images"][0])).size == (64, 64)  # resized to width × height
    for url, words in ((f"{image_host}/missing.png", "404"), ("http://10.1.2.3/x.png", "refused")):
        status, r = await call(client, "POST", "img2img", {**body, "init_images": [url]})
        assert status == 422 and r["error"] == "RequestValidationError", r
        assert r["detail"][0]["loc"] == ["body", "init_images", 0] and words in r["errors"]


async def test_fooocus_sync_reply_json_answers_the_finished_task_unless_an_image_is_accepted(s3_stack):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        client = Client(session, s3_stack.base_url)
        resp = await fooocus(client, {"prompt": "a pier", "image_number": 2})
        assert resp.status == 200 and resp.content_type == "application/json"
        task = await resp.json()
        assert task["task_status"] == "finished" and len(task["result"]) == 2
        resp = await fooocus(client, {"prompt": "a pier"}, accept="image/png")
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
