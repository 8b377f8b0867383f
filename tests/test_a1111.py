"""The AUTOMATIC1111 dialect, driven as A1111 clients drive it (requests shaped like a1111_style.md)."""

import asyncio
import base64
import json

import pytest

from .conftest import decode_image
from .stack import ALICE, BOB

SEED_NEGATIVE = ("deleted, old, oldest, ((censored)), ((bad aesthetic)), (muli view),(fused fingers:1.61051), "
                 "(too many fingers:1.61051), (unclear eyes:1.331), (underexposed, overexposed, low contrast, "
                 "greyscale, monochrome:1.2), (out of frame, cut off, cropped), ((3d, toon \\(style\\), sketch, "
                 "cartoonized)), (lowres, worst quality, low quality, normal quality, jpep artifacts, blurry vision, "
                 "blurry, watermark, signature, bad art, beginner, amateur, draft, grainy, text, title, logo, error, "
                 "toon \\(style\\):1.3), badhandsv5-neg, badhandv4, EasyNegative, (low quality, worst quality:1.5),\n"
                 "deformed, bad anatomy, lowres, monochrome, grayscale,ugly face, inaccurate limb, bad hands")
# The seed document's txt2img request, verbatim (its negative prompt is several hundred tokens long).
SEED_REQUEST = {"width": 512, "height": 512, "batch_size": 1, "prompt": "", "negative_prompt": 'deleted, old, oldest, ((censored)), ((bad aesthetic)), (muli view),(fused fingers:1.61051), (too many fingers:1.61051), (unclear eyes:1.331), (underexposed, overexposed, low contrast, greyscale, monochrome:1.2), (out of frame, cut off, cropped), (cloning, clones, same face, multiple girls), ((3d, toon \\(style\\), sketch, cartoonized)), (male face, obesity, fat,giantess, giant, dwarf), (lowres, worst quality, low quality, normal quality, jpep artifacts, blurry vision, blurry, watermark, signature, bad art, beginner, amateur, draft, grainy, text, title, logo, error, toon \\(style\\):1.3), ((bad anatomy, bad proportions, deformed, bad perspective, forced perspective), bad hands, poorly drawn hands, mutated hand, bad feet, bad leg, poorly drawn feet, extra arms, missing limbs, missing arms,bad arm, missing fingers, extra fingers, wrong fingers, twisted fingers,blurred fingers, extra digit, fewer digits, extra limbs, extra legs, leg disfigured, poorly drawn face, distorted face, strabismus, ugly, ugly man, ugly face, scar on face, face defect, facial tattoo, crescent facial mark, facial mark, mask, veil, faceless:1.5), (nsfw, large breasts, huge breasts, looking back, nude, nake breasts, direct lighting, lens flare, colorful background, warm colors, strong color, high color saturation, colorful:1.2), badhandsv5-neg, badhandv4, EasyNegative, easynegative, ng_deepnegative_v1_75t, verybadimagenegative_v1.3, painting, sketches, (low quality, worst quality:1.5),\ndeformed, bad anatomy, lowres, monochrome, grayscale,ugly face, inaccurate limb, bad hands, mutated hands,mutated legs, missing fingers, extra fingers',
                "steps": 30, "seed": -1, "enable_hr": False, "hr_upscaler": "ESRGAN_4x", "task_id": ""}
# A1111 1.10's Processed.js(), every field (diffbus adds task_id and notes).
INFO_FIELDS = {"prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
               "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps",
               "batch_size", "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash",
               "sd_vae_name", "sd_vae_hash", "seed_resize_from_w", "seed_resize_from_h", "denoising_strength",
               "extra_generation_params", "index_of_first_image", "infotexts", "styles", "job_timestamp",
               "clip_skip", "is_using_inpainting_conditioning", "version"}


async def post(client, path: str, body: dict, key: str = ALICE, basic: bool = False):
    headers = ({"Authorization": "Basic " + base64.b64encode(f"user:{key}".encode()).decode()} if basic
               else {"X-API-Key": key})
    resp = await client.session.post(f"{client.base_url}/sdapi/v1/{path}", json=body, headers=headers)
    return resp.status, await resp.json()


async def get(client, path: str, key: str = ALICE):
    resp = await client.session.get(f"{client.base_url}/sdapi/v1/{path}", headers={"X-API-Key": key})
    return resp.status, await resp.json()


async def test_txt2img_as_the_seed_sends_it(client):
    body = {"width": 64, "height": 64, "batch_size": 1, "prompt": "a lighthouse, ((best quality))",
            "negative_prompt": SEED_NEGATIVE, "steps": 4, "seed": -1, "enable_hr": False,
            "hr_upscaler": "ESRGAN_4x", "task_id": ""}
    status, answer = await post(client, "txt2img", body, basic=True)
    assert status == 200, answer
    assert set(answer) == {"images", "parameters", "info"} and answer["parameters"] == body
    [image] = answer["images"]
    assert decode_image(base64.b64decode(image)).size == (64, 64)
    info = json.loads(answer["info"])
    assert set(info) == INFO_FIELDS | {"task_id", "notes"} and info["negative_prompt"] == SEED_NEGATIVE
    assert info["all_seeds"] == [info["seed"]] and info["seed"] >= 0


async def test_the_seed_documents_request_verbatim(client):
    status, answer = await post(client, "txt2img", SEED_REQUEST)
    assert status == 200, answer
    assert decode_image(base64.b64decode(answer["images"][0])).size == (512, 512)
    info = json.loads(answer["info"])
    assert info["negative_prompt"] == SEED_REQUEST["negative_prompt"] and info["steps"] == 30


async def test_batch_size_2_by_n_iter_2_gives_4_images_with_consecutive_seeds(client):
    status, answer = await post(client, "txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                                    "batch_size": 2, "n_iter": 2, "seed": 40,
                                                    "sampler_name": "DPM++ 2M Karras"})
    assert status == 200, answer
    assert len(answer["images"]) == 4
    assert json.loads(answer["info"])["all_seeds"] == [40, 41, 42, 43]


@pytest.mark.parametrize("sampler", ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M",
                                     "DPM++ 2M SDE", "DPM++ 2S a", "DPM++ SDE", "DDIM", "PLMS", "UniPC", "LCM"])
async def test_every_sampler_name_runs(client, sampler):
    status, answer = await post(client, "txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 3,
                                                    "sampler_name": sampler, "seed": 1})
    assert status == 200, answer
    assert len(answer["images"]) == 1


async def test_img2img_with_mask(client):
    from .test_breadth import data_uri, mask_png, pattern_png

    status, answer = await post(client, "img2img", {
        "prompt": "x", "init_images": [data_uri(pattern_png(64, 64))], "mask": data_uri(mask_png(64, 64, (8, 8, 40, 40))),
        "denoising_strength": 0.8, "steps": 4, "inpainting_fill": 1, "include_init_images": True, "width": 64,
        "height": 64})
    assert status == 200, answer
    assert len(answer["images"]) == 2 and decode_image(base64.b64decode(answer["images"][0])).size == (64, 64)


@pytest.mark.parametrize("body, field", [({"prompt": "x", "restore_faces": True}, "restore_faces"),
                                         ({"prompt": "x", "tiling": True}, "tiling"),
                                         ({"prompt": "x", "sampler_name": "DPM fast"}, "sampler_name"),
                                         ({"prompt": "x", "sampler_name": "Warp Drive"}, "sampler_name"),
                                         ({"prompt": "x", "steps": 0}, "steps")])
async def test_unsupported_or_invalid_is_422_in_a1111_shape(client, body, field):
    status, answer = await post(client, "txt2img", body)
    assert status == 422
    assert answer["error"] == "RequestValidationError" and "body" in answer and field in answer["errors"]


async def test_auth_and_not_found_shapes(client):
    resp = await client.session.post(f"{client.base_url}/sdapi/v1/txt2img", json={"prompt": "x"})
    assert resp.status == 401 and (await resp.json())["error"] == "HTTPException"
    status, answer = await get(client, "progress?task_id=nonexistent")
    assert status == 404 and answer == {"detail": "Not Found"}


async def test_options_are_per_key(client):
    assert (await post(client, "options", {"sd_model_checkpoint": "nope"}))[0] == 422
    assert (await post(client, "options", {"sd_model_checkpoint": "demo", "CLIP_stop_at_last_layers": 2}))[0] == 200
    assert (await get(client, "options"))[1]["CLIP_stop_at_last_layers"] == 2
    assert (await get(client, "options", key=BOB))[1]["CLIP_stop_at_last_layers"] == 1  # the default


async def test_listings(client):
    names = lambda items, key: {item[key] for item in items}  # noqa: E731
    assert "demo" in names((await get(client, "sd-models"))[1], "model_name")
    assert {"Euler a", "DPM++ 2M", "UniPC"} <= names((await get(client, "samplers"))[1], "name")
    assert {"Karras", "Exponential"} <= names((await get(client, "schedulers"))[1], "label")
    assert {"Lanczos", "Nearest", "ESRGAN_4x"} <= names((await get(client, "upscalers"))[1], "name")
    for path in ("refresh-checkpoints", "refresh-loras"):
        assert (await post(client, path, {}))[0] == 200


async def test_progress_is_per_key_and_interrupt_stops_only_the_callers_task(client):
    body = {"prompt": "slow", "width": 512, "height": 512, "steps": 60, "task_id": "a1111-slow-1"}
    running = asyncio.create_task(post(client, "txt2img", body))
    for _ in range(100):
        status, answer = await get(client, "progress?task_id=a1111-slow-1")
        if status == 200 and answer["state"]["sampling_step"] > 0:
            break
        await asyncio.sleep(0.1)
    assert 0 < answer["progress"] < 1 and answer["state"]["sampling_steps"] == 60
    assert answer["current_image"] is None or base64.b64decode(answer["current_image"])
    assert (await get(client, "progress?task_id=a1111-slow-1", key=BOB))[0] == 404
    assert (await post(client, "interrupt", {}, key=BOB))[0] == 200  # bob has nothing running
    assert (await get(client, "progress?task_id=a1111-slow-1"))[1]["state"]["interrupted"] is False
    assert (await post(client, "interrupt", {}))[0] == 200
    status, answer = await running
    assert status == 200 and answer["images"] == []
    assert (await get(client, "progress?task_id=a1111-slow-1"))[1]["state"]["interrupted"] is True


async def test_extra_single_image_and_png_info(client):
    from .test_breadth import data_uri, pattern_png

    status, answer = await post(client, "extra-single-image", {"image": data_uri(pattern_png(32, 24)),
                                                               "upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 2})
    assert status == 200, answer
    assert set(answer) == {"html_info", "image"}
    assert decode_image(base64.b64decode(answer["image"])).size == (64, 48)
    _, generated = await post(client, "txt2img", {"prompt": "a mill", "seed": 9, "steps": 2, "width": 64,
                                                  "height": 64})
    status, info = await post(client, "png-info", {"image": "data:image/png;base64," + generated["images"][0]})
    assert status == 200 and set(info) == {"info", "items", "parameters"}
    assert info["parameters"]["Seed"] == "9" and info["info"].startswith("a mill")


async def test_img2img_resizes_the_init_image_like_a1111(client):
    from .test_breadth import data_uri, pattern_png

    for mode in (0, 1, 2):
        status, answer = await post(client, "img2img", {"prompt": "x", "init_images": [data_uri(pattern_png(80, 40))],
                                                        "width": 64, "height": 64, "steps": 4, "resize_mode": mode})
        assert status == 200, answer
        assert decode_image(base64.b64decode(answer["images"][0])).size == (64, 64)


@pytest.mark.parametrize("body, field", [({"prompt": "x <hypernet:foo:1>"}, "prompt"),
                                         ({"prompt": "x", "enable_hr": True, "hr_prompt": "y"}, "hr_prompt")])
async def test_unsupported_extras_are_refused_by_name(client, body, field):
    status, answer = await post(client, "txt2img", body)
    assert status == 422 and field in answer["errors"]


async def test_response_shapes_follow_a1111_models(client):
    """Field by field, as A1111's modules/api/models.py declares them."""
    status, sync = await post(client, "txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                  "sampler_name": "Euler a"})
    assert json.loads(sync["info"])["sampler_name"] == "Euler a"
    task_id = json.loads(sync["info"])["task_id"]
    status, progress = await get(client, "progress")  # no task_id: as A1111, idle once the task is done
    assert status == 200 and set(progress) == {"progress", "eta_relative", "state", "current_image", "textinfo",
                                               "current_task"}
    assert {"skipped", "interrupted", "job", "job_count", "job_timestamp", "job_no", "sampling_step",
            "sampling_steps"} <= set(progress["state"])
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    status, progress = await get(client, f"progress?task_id={task_id}")  # the seed's extension: that task
    assert progress["progress"] == 1.0 and progress["state"]["job"] == task_id
    shapes = {"sd-models": {"title", "model_name", "hash", "sha256", "filename", "config",
                            "family", "width", "height"},  # diffbus's additions beside A1111's
              "samplers": {"name", "aliases", "options"},
              "upscalers": {"name", "model_name", "model_path", "model_url", "scale"},
              "schedulers": {"name", "label", "aliases", "default_rho", "need_inner_model"},
              "loras": {"name", "alias", "path", "metadata"}}
    for path, fields in shapes.items():
        status, items = await get(client, path)
        assert status == 200 and items, path
        assert all(set(item) == fields for item in items), path
    assert "demo-style" in {item["name"] for item in (await get(client, "loras"))[1]}
