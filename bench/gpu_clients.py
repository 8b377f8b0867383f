"""diffbus under load for bench/gpu.py: clients that keep a stack busy over HTTP, the GPU's busy share
meanwhile (nvidia-smi), and the worker's gaps between busy spans (from its own events)."""

import asyncio
import statistics
import time

import aiohttp
import nats

from common import run_task
from gpu_measure import Utilization
from schemas import subjects
from schemas.codec import decode_event


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
    """`count` clients, each submitting one job, awaiting its image and going on, until `images` are
    done (after a warm-up of `count` jobs at once, or `images` when fewer)."""
    ids, left = [], images

    async def client(session, n: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            task, _ = await run_task(session, base, "/api/v1/generate", {**body, "seed": n * 10_000 + left})
            ids.append(task["task_id"])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(run_task(session, base, "/api/v1/generate", body) for _ in range(min(count, images))))
        with Utilization() as util:
            t = time.perf_counter()
            await asyncio.gather(*(client(session, n) for n in range(count)))
            wall = time.perf_counter() - t
    gaps = await worker_gaps(nats_url, ids)
    return {"clients": count, "images": len(ids), "wall_s": wall, "images_per_s": len(ids) / wall,
            "gpu_busy_share": util.busy_share,
            "worker_gap_ms_median": 1000 * statistics.median(gaps) if gaps else None,
            "worker_gap_ms_total": 1000 * sum(gaps)}
