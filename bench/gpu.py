"""GPU throughput: an SD 1.5-sized pipeline (its published architecture configs, random weights: the
compute does not depend on the weights' values), fp16, 512×512, 20 steps, on a CUDA machine with
no network.

    .venv/bin/python bench/gpu.py [--images 32] [--size 512] [--steps 20]
    .venv/bin/python bench/gpu.py --tiny        # the demo model, small and few, on any machine

Measures, in one run: images/s of a plain diffusers loop (one image a call, in this process); of
diffbus with one gpu_worker, batching off, with 4 clients keeping it busy; and with batching on
(max_images 8), at 4 and at 8 concurrent jobs (that many clients). Each client submits over HTTP,
follows the task's SSE stream and downloads the image. Also: torch.cuda.max_memory_allocated for
one call of 1, 4 and 8 images; the GPU's idle share while diffbus ran (nvidia-smi utilization
sampled every 50 ms, where nvidia-smi exists) and the worker's gap between one job's `completed`
and the next one's `started`. Writes bench/results/gpu-<gpu name>.json.
"""

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import nats

from common import demo_model, machine, run_task, stacks, write_result
from schemas import subjects
from schemas.codec import decode_event

PROMPT = "a lighthouse at dusk, oil painting"

# Stable Diffusion 1.5's published configs (unet/config.json, vae/config.json) and CLIP ViT-L/14's
# text model (the text encoder SD 1.5 ships).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, act_fn="silu", layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
VIT_L14_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768)


def build_sd15(path: Path) -> Path:
    """The SD 1.5 architecture with random weights, saved in fp16 as an ordinary diffusers folder."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from services.gpu_worker.demo_model import write_tokenizer

    if (path / "model_index.json").exists():
        return path
    write_tokenizer(path.parent / "tokenizer-src")  # a byte-level vocabulary: no download
    tokenizer = CLIPTokenizer.from_pretrained(path.parent / "tokenizer-src", model_max_length=77)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init is much faster there
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **VIT_L14_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).to("cpu").save_pretrained(path)
    return path


def plain_loop(model: Path, images: int, size: int, steps: int) -> dict:
    """A plain diffusers loop, one image a call, after a warm-up; then the memory peak of one call of
    1, 4 and 8 images."""
    import torch
    from diffusers import StableDiffusionPipeline

    cuda = torch.cuda.is_available()
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float16 if cuda else torch.float32,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.to("cuda" if cuda else "cpu")
    pipe.set_progress_bar_config(disable=True)

    def call(n: int, seed: int):
        return pipe([PROMPT] * n, height=size, width=size, num_inference_steps=steps,
                    generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]).images

    call(1, 0)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t = time.perf_counter()
    for i in range(images):
        call(1, i)
    sync()
    wall = time.perf_counter() - t
    peaks = {}
    if cuda:
        for n in (1, 4, 8):
            torch.cuda.reset_peak_memory_stats()
            call(n, 0)
            peaks[f"batch_{n}_gb"] = torch.cuda.max_memory_allocated() / 2**30
    del pipe
    if cuda:
        torch.cuda.empty_cache()
    return {"images": images, "wall_s": wall, "images_per_s": images / wall, "peak_memory": peaks}


class Utilization:
    """nvidia-smi's GPU utilization every 50 ms, while running (nothing where nvidia-smi is missing)."""

    def __init__(self):
        self.samples: list[int] = []
        self.proc = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-i", "0", "-lms", "50"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    @property
    def idle_share(self) -> float | None:
        return sum(s == 0 for s in self.samples) / len(self.samples) if self.samples else None


async def worker_gaps(nats_url: str, task_ids: list[str]) -> list[float]:
    """Seconds between the worker's busy spans (`started` to `completed`, from its own timestamps;
    the jobs of one batch overlap into one span)."""
    nc = await nats.connect(nats_url)
    try:
        js, spans = nc.jetstream(), []
        for task_id in task_ids:
            spans.append([decode_event((await js.get_last_msg(subjects.TASKS, subjects.task_event(task_id, e))).data).at
                          for e in ("started", "completed")])
    finally:
        await nc.close()
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [b[0] - a[1] for a, b in zip(merged, merged[1:])]


async def clients(base: str, nats_url: str, count: int, images: int, body: dict) -> dict:
    """`count` clients, each submitting one job, awaiting it and going on, until `images` are done."""
    ids, left = [], images

    async def client(session, n: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            task, _ = await run_task(session, base, "/api/v1/generate", {**body, "seed": n * 10_000 + left})
            ids.append(task["task_id"])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(run_task(session, base, "/api/v1/generate", body) for _ in range(count)))  # warm-up
        with Utilization() as util:
            t = time.perf_counter()
            await asyncio.gather(*(client(session, n) for n in range(count)))
            wall = time.perf_counter() - t
    gaps = await worker_gaps(nats_url, ids)
    return {"clients": count, "images": len(ids), "wall_s": wall, "images_per_s": len(ids) / wall,
            "gpu_idle_share": util.idle_share, "worker_gap_ms_median": 1000 * statistics.median(gaps) if gaps else None,
            "worker_gap_ms_total": 1000 * sum(gaps)}


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32, help="images in each measurement")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="the demo model at 64×64, 4 steps, 4 images (CPU smoke run)")
    args = ap.parse_args()
    if args.tiny:
        args.images, args.size, args.steps = 4, 64, 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    body = {"prompt": PROMPT, "width": args.size, "height": args.size, "num_inference_steps": args.steps}
    result = {"benchmark": "gpu", "machine": machine(), "gpu": gpu_name(), "request": body,
              "model": "demo (tiny)" if args.tiny else "SD 1.5 architecture, random weights, fp16"}
    with tempfile.TemporaryDirectory(prefix="diffbus-bench-") as d:
        tmp = Path(d)
        model = demo_model(tmp) if args.tiny else build_sd15(tmp / "sd15")
        print("plain diffusers loop", flush=True)
        result["plain"] = plain_loop(model, args.images, args.size, args.steps)
        models = [{"name": "demo" if args.tiny else "sd15", "path": str(model), "width": args.size,
                   "height": args.size}]
        # (stack, clients): with max_images 8, 4 clients make batches of at most 4.
        runs = {"unbatched": ("off", 4), "batched_4": ("on", 4), "batched_8": ("on", 8)}
        configs = {mode: {"models": models, "worker": {"batching": {"enabled": mode == "on", "max_images": 8}}}
                   for mode in ("off", "on")}
        with stacks(tmp, configs) as up:  # side by side; they take turns, and an idle one uses no GPU
            for name, (mode, count) in runs.items():
                print(f"diffbus {name}", flush=True)
                result[name] = asyncio.run(clients(up[mode].base, up[mode].nats_url, count, args.images, body))
                result[name]["ratio_vs_plain"] = result[name]["images_per_s"] / result["plain"]["images_per_s"]
    result["targets"] = {
        "unbatched_at_least_0.98x_plain": result["unbatched"]["ratio_vs_plain"] >= 0.98,
        "batched_at_least_1.5x_plain": max(result[n]["ratio_vs_plain"] for n in ("batched_4", "batched_8")) >= 1.5}
    print(f"\n{result['gpu']}: {result['model']}, {args.size}x{args.size}, {args.steps} steps, {args.images} images each")
    print(f"{'':12} {'images/s':>9} {'x plain':>8} {'GPU idle':>9} {'gap ms':>7}")
    print(f"{'plain loop':12} {result['plain']['images_per_s']:9.3f} {1:8.2f}")
    for name in runs:
        r = result[name]
        idle = "-" if r["gpu_idle_share"] is None else f"{100 * r['gpu_idle_share']:.0f}%"
        gap = "-" if r["worker_gap_ms_median"] is None else f"{r['worker_gap_ms_median']:.0f}"
        print(f"{name:12} {r['images_per_s']:9.3f} {r['ratio_vs_plain']:8.2f} {idle:>9} {gap:>7}")
    for key, gb in result["plain"]["peak_memory"].items():
        print(f"peak memory {key.removesuffix('_gb').replace('_', ' ')}: {gb:.2f} GiB")
    print(f"targets: {result['targets']}")
    name = re.sub(r"[^a-z0-9]+", "-", result["gpu"].lower()).strip("-")
    write_result(f"gpu-tiny-{name}" if args.tiny else f"gpu-{name}", result)  # only real runs are committed


if __name__ == "__main__":
    main()
