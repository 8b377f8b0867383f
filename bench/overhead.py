"""What the pipeline costs: the same demo-model request run directly in-process and through the whole
stack (`diffbus up`: HTTP → JetStream → gpu_worker → object store → projector → HTTP).

    .venv/bin/python bench/overhead.py [--size 384] [--steps 20] [--runs 20]

The default, 384×384 at 20 steps, is a job of about one second on a 2-core CPU. End to end is what a
client does: POST /api/v1/generate, follow GET /api/v1/tasks/{id}/events (SSE) until `completed`,
download the image. The two are interleaved run by run (which goes first alternates), after a
warm-up of each. Prints median/p95 of each; the overhead in ms and the ratio direct/e2e, as medians
of each run's own pair (drift between runs cancels out); and the CPU seconds each way (the e2e
figure sums every process of the stack). Writes bench/results/overhead.json.
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from common import demo_model, machine, percentile, run_task, running, tree_cpu_seconds, write_result
from services.config import load

TARGET_OVERHEAD_MS, TARGET_RATIO = 30.0, 0.97


def direct_runner(config, body: dict):
    """A function that runs the request in-process once: (wall s, cpu s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from schemas.jobs import Txt2Img
    from services import imaging
    from services.gpu_worker import generate
    from services.gpu_worker.pipelines import ModelRegistry

    pipe = ModelRegistry(config).pipeline("demo")
    spec = Txt2Img(model="demo", prompt=body["prompt"], width=body["width"], height=body["height"],
                   steps=body["num_inference_steps"], guidance_scale=7.5, seed=body["seed"])

    def once() -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        [img] = generate.run(pipe, spec, None)
        imaging.encode(img, spec.output_format, imaging.infotext(spec, spec.seed))
        return time.perf_counter() - t, time.process_time() - c

    return once


async def end_to_end(session: aiohttp.ClientSession, base: str, body: dict) -> float:
    return (await run_task(session, base, "/api/v1/generate", body))[1]


async def interleaved(direct, base: str, body: dict, runs: int, stack_pid: int):
    """Alternate the two, so drift in the machine's speed hits both alike."""
    d_wall, d_cpu, e_wall, e_cpu = [], [], [], []
    async with aiohttp.ClientSession() as session:
        direct(), await end_to_end(session, base, body)  # warm-up
        for i in range(runs):
            for which in ("direct", "e2e") if i % 2 == 0 else ("e2e", "direct"):  # neither always goes first
                if which == "direct":
                    wall, cpu = direct()
                    d_wall.append(wall)
                    d_cpu.append(cpu)
                else:
                    cpu0 = tree_cpu_seconds(stack_pid)
                    e_wall.append(await end_to_end(session, base, body))
                    e_cpu.append(tree_cpu_seconds(stack_pid) - cpu0)
    return d_wall, d_cpu, e_wall, e_cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    host = machine()  # before the run: its load average says what else the machine was doing
    body = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size,
            "num_inference_steps": args.steps, "seed": 42}
    with tempfile.TemporaryDirectory(prefix="diffbus-bench-") as d:
        tmp = Path(d)
        model = demo_model(tmp)
        config = load(None, {}, models=[{"name": "demo", "path": str(model)}], data_dir=str(tmp / "data"))
        direct = direct_runner(config, body)
        with running(tmp / "stack", models=[{"name": "demo", "path": str(model)}]) as stack:
            d_wall, d_cpu, e_wall, e_cpus = asyncio.run(interleaved(direct, stack.base, body, args.runs,
                                                                    stack.proc.pid))
    result = {
        "benchmark": "overhead", "machine": host, "request": body, "runs": args.runs,
        "direct": {"median_s": statistics.median(d_wall), "p95_s": percentile(d_wall, 95),
                   "cpu_s": statistics.median(d_cpu)},
        "e2e": {"median_s": statistics.median(e_wall), "p95_s": percentile(e_wall, 95),
                "cpu_s": statistics.median(e_cpus)},
    }
    # From each run's own pair, a second or two apart, so the machine's drift between runs cancels
    # out (the difference of the two medians moves by tens of ms from one run of this to the next).
    result["overhead_ms"] = 1000 * statistics.median(e - d for d, e in zip(d_wall, e_wall))
    result["ratio_direct_over_e2e"] = statistics.median(d / e for d, e in zip(d_wall, e_wall))
    result["overhead_of_medians_ms"] = 1000 * (result["e2e"]["median_s"] - result["direct"]["median_s"])
    result["overhead_p95_ms"] = 1000 * (result["e2e"]["p95_s"] - result["direct"]["p95_s"])
    result["targets"] = {f"overhead_at_most_{TARGET_OVERHEAD_MS:g}ms": result["overhead_ms"] <= TARGET_OVERHEAD_MS,
                         f"ratio_at_least_{TARGET_RATIO:g}": result["ratio_direct_over_e2e"] >= TARGET_RATIO}
    print(f"\n{args.size}x{args.size}, {args.steps} steps, {args.runs} runs, {os.cpu_count()} cores")
    print(f"{'':8} {'median ms':>10} {'p95 ms':>10} {'cpu ms':>10}")
    for name in ("direct", "e2e"):
        r = result[name]
        print(f"{name:8} {1000 * r['median_s']:10.1f} {1000 * r['p95_s']:10.1f} {1000 * r['cpu_s']:10.1f}")
    print(f"overhead {result['overhead_ms']:.1f} ms (median of the runs' own differences), "
          f"direct/e2e = {result['ratio_direct_over_e2e']:.3f}; difference of the medians "
          f"{result['overhead_of_medians_ms']:.1f} ms, of the p95s {result['overhead_p95_ms']:.1f} ms")
    print(f"targets: {result['targets']}")
    write_result("overhead", result)


if __name__ == "__main__":
    main()
