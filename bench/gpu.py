"""GPU throughput, per model family (bench/gpu_families.py: SD 1.5, SDXL, SD3, Flux, random weights from
their published configs), at the family's native size and steps, on a CUDA machine with no network.

    python bench/gpu.py [--families sd15 sdxl sd3 flux] [--budget-s 360] [--images 32]
    python bench/gpu.py --tiny        # the tiny models, 64×64, 4 steps, on any machine (the rehearsal)

bench/device.sh runs it on a GPU host (bench/README.md). Each family runs in its own process with its
share of the time budget: a crash of one family's CUDA path (its traceback printed) or a family out of
time leaves the others running. Per family: the FLOPs of one image (torch's FLOP counter, on meta
tensors) and the bf16 matmul rate measured in the same run, so every images/s reads as a fraction of
the physical bound; images/s of a plain diffusers loop (batch 1), peak memory for 1, 4 and 8 images;
where diffbus's worker serves the family: time to the first image (stack start, model load), images/s
with batching off (4 clients) and on at 4 and 8 concurrent jobs, the GPU's busy share (nvidia-smi) and
the worker's gaps; then each speed setting (worker.compile, channels_last, fuse_qkv, attention,
vae_decode) against the defaults, in the plain loop at batch 4. Writes bench/results/gpu-<gpu>.json.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import aiohttp

from common import ROOT, Stack, machine, run_task, write_result
from gpu_clients import clients
from gpu_families import FAMILIES, Family, save
from gpu_measure import matmul_tflops, peak_memory, pipeline_flops, plain_loop

STARTED = time.monotonic()
SETTINGS = {"defaults": {}, "channels_last": {"channels_last": True}, "fuse_qkv": {"fuse_qkv": True},
            "classic_attention": {"attention": "classic"}, "vae_per_image": {"vae_decode": "per_image"},
            "compile": {"compile": True}}
SHARE = {"sd15": 0.2, "sdxl": 0.25, "sd3": 0.25, "flux": 0.3}  # of the time budget
# worker settings and model settings against memory, for the families with `quantize:` (bf16 plain loop,
# batch 1, peak memory): diffusers' model offload, and the transformer quantized as it loads
MEMORY = {"offload_model": ({"offload": "model"}, {}), "quantize_fp8": ({}, {"quantize": "fp8"}),
          "quantize_nf4": ({}, {"quantize": "nf4"}), "quantize_int8": ({}, {"quantize": "int8"})}
DIFFBUS_RUNS = {"unbatched": (False, 4), "batched_4": (True, 4), "batched_8": (True, 8)}  # (batching, clients)


class FamilyRun:
    """One family's measurements in this process, each step recorded (or its error) as it ends."""

    def __init__(self, family: Family, args, tmp: Path):
        import torch

        self.family, self.args, self.tmp = family, args, tmp
        self.size, self.steps = (64, 4) if args.tiny else (family.size, family.steps)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.deadline = STARTED + args.budget_s  # the imports count too
        self.out = {"family": family.name, "model": "tiny " + family.name if args.tiny else family.model,
                    "size": self.size, "steps": self.steps, "guidance_scale": family.guidance,
                    "served_by_diffbus": family.worker, "budget_s": args.budget_s}
        self.path: Path | None = None

    def step(self, key: str, fn, steps_left: int = 1, into: dict | None = None):
        """Run `fn(deadline)` with its share of the time left; record its result (or its traceback, or
        that it was skipped) as `into[key]` (default: the family's results); the record."""
        into = self.out if into is None else into
        left = self.deadline - time.monotonic()
        if left < 5 and not self.args.tiny:  # a rehearsal runs every step (its budget only stops a hang)
            into[key] = {"skipped": "out of the family's time budget"}
            print(f"[{self.family.name}] {key}: skipped (time budget)", flush=True)
            return into[key]
        print(f"[{self.family.name}] {key}", flush=True)
        t = time.perf_counter()
        try:
            into[key] = fn(time.monotonic() + left / steps_left)
        except Exception:  # a CUDA path that crashes: shown, recorded, and the next step still runs
            traceback.print_exc()
            into[key] = {"error": traceback.format_exc()[-3000:]}
        into[key]["step_s"] = time.perf_counter() - t
        (self.tmp / "part.json").write_text(json.dumps(self.out, indent=2))
        return into[key]

    def run(self) -> None:
        self.step("matmul", lambda _: matmul_tflops())
        self.step("flops", lambda _: self.flops())
        if self.family.worker:
            self.step("weights", lambda _: self.save())
        self.step("plain", self.plain, 4)
        if self.family.worker and self.path is not None:
            self.step("diffbus", self.diffbus, 3)
        self.out["settings"] = {}
        for i, (name, settings) in enumerate(SETTINGS.items()):
            if settings.get("compile") and self.device != "cuda":  # minutes of C++ compiling on a CPU
                self.out["settings"][name] = {"skipped": "measured on CUDA only"}
                continue
            self.step(name, lambda d, s=settings: self.setting(s, d), len(SETTINGS) - i, into=self.out["settings"])
        if self.family.quantizable and self.path is not None:
            self.out["memory"] = {}
            for i, (name, (worker, model)) in enumerate(MEMORY.items()):
                if (model.get("quantize") in ("nf4", "int8") or worker.get("offload")) and self.device != "cuda":
                    self.out["memory"][name] = {"skipped": "CUDA only"}
                    continue
                self.step(name, lambda d, w=worker, m=model: self.memory(w, m, d), len(MEMORY) - i,
                          into=self.out["memory"])
        bound = self.images_per_s_bound()
        if bound:
            self.out["bound_images_per_s"] = bound
            for r in [self.out.get("plain"), *self.out.get("diffbus", {}).values()]:
                if isinstance(r, dict) and "images_per_s" in r:
                    r["fraction_of_bound"] = r["images_per_s"] / bound
        (self.tmp / "part.json").write_text(json.dumps(self.out, indent=2))

    def flops(self) -> dict:
        with tempfile.TemporaryDirectory() as tok:
            pipe = self.family.build(self.args.tiny, Path(tok), "cpu" if self.args.tiny else "meta")
        return pipeline_flops(pipe, self.family, self.size, self.steps)

    def images_per_s_bound(self) -> float | None:
        try:
            return self.out["matmul"]["tflops"] / self.out["flops"]["per_image_tflop"]
        except (KeyError, TypeError):
            return None

    def save(self) -> dict:
        t = time.perf_counter()
        if self.args.tiny and self.family.name == "sd15" and os.environ.get("BENCH_DEMO_MODEL"):
            self.path = Path(os.environ["BENCH_DEMO_MODEL"])  # the smoke test's, built once
        else:
            self.path = save(self.family, self.args.tiny, self.tmp / self.family.name, self.device)
        return {"path": str(self.path), "build_s": time.perf_counter() - t}

    def pipeline(self, model_settings: dict | None = None, **settings):
        """The pipeline as diffbus's worker loads it (its ModelRegistry, the family's dtype on CUDA, the
        speed settings, `model_settings` such as quantize); built in memory for a family the worker does
        not serve yet."""
        import torch

        from services.config import WorkerConfig, load
        from services.gpu_worker import speed
        from services.gpu_worker.pipelines import ModelRegistry

        if self.path is not None:
            config = load(environ={}, data_dir=str(self.tmp / "data"), worker={"device": self.device, **settings},
                          models=[{"name": self.family.name, "path": str(self.path), **(model_settings or {})}])
            return ModelRegistry(config).pipeline(self.family.name).pipe  # the diffusers pipeline of its LoadedModel
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tok:
            pipe = self.family.build(self.args.tiny, Path(tok), self.device)
        pipe.to(getattr(torch, self.family.dtype) if self.device == "cuda" else torch.float32)
        pipe.set_progress_bar_config(disable=True)
        speed.apply(pipe, WorkerConfig(**settings))
        return pipe

    def plain(self, deadline: float) -> dict:
        t = time.perf_counter()
        pipe = self.pipeline()
        load_s = time.perf_counter() - t
        result = {"load_s": load_s, **plain_loop(pipe, self.family, self.size, self.steps, 1, deadline,
                                                 self.args.images)}
        if self.device == "cuda":
            result["peak_memory"] = peak_memory(pipe, self.family, self.size, self.steps)
        release(pipe)
        return result

    def memory(self, worker: dict, model: dict, deadline: float) -> dict:
        """Images/s and peak memory with offload or a quantized transformer, batch 1."""
        t = time.perf_counter()
        pipe = self.pipeline(model, **worker)
        result = {"load_s": time.perf_counter() - t,
                  **plain_loop(pipe, self.family, self.size, self.steps, 1, deadline, self.args.images)}
        if self.device == "cuda":
            result["peak_memory"] = peak_memory(pipe, self.family, self.size, self.steps)
        release(pipe)
        return result

    def setting(self, settings: dict, deadline: float) -> dict:
        t = time.perf_counter()
        pipe = self.pipeline(**settings)
        batch = 2 if self.args.tiny else 4
        result = {"load_s": time.perf_counter() - t,
                  **plain_loop(pipe, self.family, self.size, self.steps, batch, deadline, self.args.images)}
        release(pipe)
        defaults = self.out["settings"].get("defaults") or {}
        if "images_per_s" in defaults:
            result["ratio_vs_defaults"] = result["images_per_s"] / defaults["images_per_s"]
        return result

    def diffbus(self, deadline: float) -> dict:
        body = {"prompt": "a lighthouse at dusk, oil painting", "model": self.family.name, "width": self.size,
                "height": self.size, "num_inference_steps": self.steps, "guidance_scale": self.family.guidance}
        plain = self.out.get("plain", {}).get("images_per_s")
        results = {}
        for batching in (False, True):
            runs = {name: clients_n for name, (on, clients_n) in DIFFBUS_RUNS.items() if on == batching}
            per_run = (deadline - time.monotonic()) / (len(DIFFBUS_RUNS) - len(results))
            results.update(self.one_stack(batching, runs, body, self.images_for(plain, per_run)))
        for r in results.values():
            if plain and "images_per_s" in r:
                r["ratio_vs_plain"] = r["images_per_s"] / plain
        return results

    def images_for(self, plain_images_per_s: float | None, seconds: float) -> int:
        floor = min(8, self.args.images)
        if not plain_images_per_s:
            return floor
        return max(floor, min(self.args.images, int(plain_images_per_s * seconds * 0.6)))

    def one_stack(self, batching: bool, runs: dict[str, int], body: dict, images: int) -> dict:
        """One `diffbus up` (batching on or off), the clients of each run in turn; its log kept."""
        stack = Stack(self.tmp / f"stack-{'on' if batching else 'off'}",
                      models=[{"name": self.family.name, "path": str(self.path), "width": self.size,
                               "height": self.size}],
                      worker={"batching": {"enabled": batching, "max_images": 8}},
                      limits={"max_width": max(2048, self.size), "max_height": max(2048, self.size)})
        t = time.perf_counter()
        stack.spawn()
        results = {}
        try:
            stack.wait_ready(timeout=600)
            asyncio.run(first_image(stack.base, body))
            first = time.perf_counter() - t  # stack start, model load, one image in hand
            for name, count in runs.items():
                results[name] = asyncio.run(clients(stack.base, stack.nats_url, count, images, body))
                results[name]["time_to_first_image_s"] = first
        finally:
            stack.signal_stop()
            stack.wait_stopped()
        return results


async def first_image(base: str, body: dict) -> None:
    async with aiohttp.ClientSession() as session:
        await run_task(session, base, "/api/v1/generate", body)


def quiet_progress_bars() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def release(pipe) -> None:
    import gc

    import torch

    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_families(args) -> dict:
    """Each family in its own process, with its share of the budget; what each recorded."""
    families = {}
    total = sum(SHARE[name] for name in args.families)
    for name in args.families:
        budget = args.budget_s * SHARE[name] / total
        with tempfile.TemporaryDirectory(prefix=f"diffbus-gpu-{name}-") as d:
            scratch = Path(d)
            cmd = [sys.executable, __file__, "--one", name, "--scratch", d, "--budget-s", f"{budget:.0f}",
                   "--images", str(args.images)] + (["--tiny"] if args.tiny else [])
            code = run_with_timeout(cmd, budget + 15)  # a step begun in time may overrun a little
            part = scratch / "part.json"
            families[name] = json.loads(part.read_text()) if part.exists() else {"family": name}
            if code != 0:
                families[name]["process"] = f"ended: {code}"  # killed or crashed: what it had recorded stays
                print(f"[{name}] the family's process ended: {code}", flush=True)
            if args.stack_logs:
                with open(args.stack_logs, "a") as logs:
                    for log in sorted(scratch.glob("stack-*/up.log")):
                        logs.write(f"==== {name}, batching {log.parent.name.removeprefix('stack-')}\n")
                        logs.write(log.read_text(errors="replace"))
    return families


def run_with_timeout(cmd: list[str], timeout: float) -> int | str:
    """Run a family's process; past `timeout`, SIGTERM (it stops its stack), then SIGKILL 20 s later."""
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return f"timed out after {timeout:.0f} s"


def stop_on_sigterm() -> None:
    """SIGTERM ends a family's process through its `finally`s, so its `diffbus up` stops too."""
    def handler(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def report(result: dict) -> None:
    print(f"\n{result['gpu']}: bf16/fp32 matmul, images/s (x plain loop; share of the FLOP bound)")
    for name, f in result["families"].items():
        bound = f.get("bound_images_per_s")
        print(f"{name}: {f.get('model')}, {f.get('size')}x{f.get('size')}, {f.get('steps')} steps"
              + (f", bound {bound:.2f} images/s" if bound else "") + (f" [{f['process']}]" if "process" in f else ""))
        diffbus = f.get("diffbus", {})
        runs = [("diffbus", diffbus)] if "error" in diffbus or "skipped" in diffbus else list(diffbus.items())
        rows = [("plain loop", f.get("plain"))] + runs + \
            [(f"setting {k} (b4)", v) for k, v in (f.get("settings") or {}).items()]
        for label, r in rows:
            if not isinstance(r, dict):
                continue
            if "images_per_s" not in r:
                print(f"  {label:28} {'error' if 'error' in r else r.get('skipped', '-')}")
                continue
            extra = [f"x{r[k]:.2f}" for k in ("ratio_vs_plain", "ratio_vs_defaults") if k in r]
            extra += [f"{100 * r['fraction_of_bound']:.0f}% of bound"] if "fraction_of_bound" in r else []
            extra += [f"GPU busy {100 * r['gpu_busy_share']:.0f}%"] if r.get("gpu_busy_share") is not None else []
            extra += [f"first image {r['time_to_first_image_s']:.1f} s"] if "time_to_first_image_s" in r else []
            print(f"  {label:28} {r['images_per_s']:8.3f}  " + "  ".join(extra))
        for key, gib in ((f.get("plain") or {}).get("peak_memory") or {}).items():
            print(f"  peak memory {key}: {gib:.2f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", "--family", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    ap.add_argument("--budget-s", type=float, help="seconds for all families together (360; --tiny: 1800, a cap)")
    ap.add_argument("--images", type=int, default=32, help="at most this many images a measurement")
    ap.add_argument("--tiny", action="store_true", help="tiny models, 64×64, 4 steps, 2 images (a CPU rehearsal)")
    ap.add_argument("--name", help="results file name (default gpu-<gpu>, gpu-tiny-<gpu> with --tiny)")
    ap.add_argument("--stack-logs", help="append every stack's log to this file")
    ap.add_argument("--one", choices=list(FAMILIES), help=argparse.SUPPRESS)  # a family's own process
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.budget_s is None:
        args.budget_s = 1800 if args.tiny else 360
    if args.tiny:
        args.images = min(args.images, 2)
    if args.one:
        stop_on_sigterm()
        quiet_progress_bars()
        FamilyRun(FAMILIES[args.one], args, Path(args.scratch)).run()
        return
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result = {"benchmark": "gpu", "machine": machine(), "gpu": gpu, "torch": torch.__version__,
              "tiny": args.tiny, "budget_s": args.budget_s}
    t = time.perf_counter()
    result["families"] = run_families(args)
    result["wall_s"] = time.perf_counter() - t
    report(result)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    write_result(args.name or (f"gpu-tiny-{slug}" if args.tiny else f"gpu-{slug}"), result)


if __name__ == "__main__":
    main()
