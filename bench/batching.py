"""Dynamic batching: 8 compatible demo-model jobs submitted at once to a diffbus whose gpu worker has
batching off, and to one with it on; both stacks run side by side and take turns, round by round.

    .venv/bin/python bench/batching.py [--jobs 8] [--size 256] [--steps 20] [--rounds 3]

Each client submits, follows the task's SSE stream and downloads the image. Per round: images/s
(jobs over the time from the first submit to the last image in hand) and each job's latency; the
batch sizes the worker formed come from its `started` events. Prints the medians over the rounds
and the ratios on/off; writes bench/results/batching.json. On a CPU the gain may be nil: batching
pays where one call keeps a GPU busier.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import nats

from common import demo_model, machine, percentile, run_task, stacks, write_result
from schemas import subjects
from schemas.codec import decode_event


async def one_round(base: str, nats_url: str, jobs: int, body: dict, seed: int) -> dict:
    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        done = await asyncio.gather(*(run_task(session, base, "/api/v1/generate",
                                               {**body, "seed": seed + i, "prompt": f"{body['prompt']} {i}"})
                                      for i in range(jobs)))
        wall = time.perf_counter() - t0
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        batches = []
        for task, _ in done:
            msg = await js.get_last_msg(subjects.TASKS, subjects.task_event(task["task_id"], "started"))
            batches.append(len(decode_event(msg.data).batch) or 1)
    finally:
        await nc.close()
    latencies = sorted(seconds for _, seconds in done)
    return {"images_per_s": jobs / wall, "wall_s": wall, "latency_s": latencies, "batch_sizes": batches}


def summarize(rounds: list[dict]) -> dict:
    latencies = [s for r in rounds for s in r["latency_s"]]
    return {
        "images_per_s": statistics.median(r["images_per_s"] for r in rounds),
        "first_image_s": statistics.median(r["latency_s"][0] for r in rounds),
        "median_latency_s": statistics.median(latencies),
        "p95_latency_s": percentile(latencies, 95),
        "last_image_s": statistics.median(r["latency_s"][-1] for r in rounds),
        "largest_batch": max(max(r["batch_sizes"]) for r in rounds),
        "rounds": rounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    host = machine()  # before the run: its load average says what else the machine was doing
    body = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size,
            "num_inference_steps": args.steps}
    modes = {"off": {"enabled": False}, "on": {"enabled": True, "max_images": args.jobs}}
    runs = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="diffbus-bench-") as d:
        tmp = Path(d)
        model = demo_model(tmp)
        models = [{"name": "demo", "path": str(model)}]
        with stacks(tmp, {mode: {"models": models, "worker": {"batching": b}} for mode, b in modes.items()}) as up:
            for mode, stack in up.items():  # warm-up
                asyncio.run(one_round(stack.base, stack.nats_url, args.jobs, body, 0))
            for n in range(args.rounds):
                for mode, stack in up.items():
                    print(f"round {n + 1}: batching {mode}", flush=True)
                    runs[mode].append(asyncio.run(one_round(stack.base, stack.nats_url, args.jobs, body, 1000 * n)))
    result = {"benchmark": "batching", "machine": host, "jobs": args.jobs, "request": body,
              "rounds": args.rounds, **{mode: summarize(r) for mode, r in runs.items()}}
    off, on = result["off"], result["on"]
    result["ratio_on_over_off"] = {
        "images_per_s": on["images_per_s"] / off["images_per_s"],
        "first_image_latency": on["first_image_s"] / off["first_image_s"],
        "median_latency": on["median_latency_s"] / off["median_latency_s"],
        "last_image_latency": on["last_image_s"] / off["last_image_s"],
    }
    print(f"\n{args.jobs} jobs at once, {args.size}x{args.size}, {args.steps} steps, {args.rounds} rounds, "
          f"{result['machine']['cpus']} cores")
    print(f"{'batching':9} {'images/s':>9} {'first s':>9} {'median s':>9} {'p95 s':>9} {'last s':>9} {'batch':>6}")
    for mode in ("off", "on"):
        r = result[mode]
        print(f"{mode:9} {r['images_per_s']:9.2f} {r['first_image_s']:9.2f} {r['median_latency_s']:9.2f} "
              f"{r['p95_latency_s']:9.2f} {r['last_image_s']:9.2f} {r['largest_batch']:6d}")
    ratio = result["ratio_on_over_off"]
    print(f"on/off: images/s {ratio['images_per_s']:.2f}x, first image latency {ratio['first_image_latency']:.2f}x, "
          f"median latency {ratio['median_latency']:.2f}x, last image {ratio['last_image_latency']:.2f}x")
    write_result("batching", result)


if __name__ == "__main__":
    main()
