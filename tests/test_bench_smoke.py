"""Each benchmark runs, tiny, and writes its results file. A benchmark is not a test: no timings here,
only that it works, reports what it should, and lost no task."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory, demo_model) -> dict:
    """Results to a temp dir, not bench/results; the session's demo model instead of a new one each."""
    return {**os.environ, "BENCH_RESULTS_DIR": str(tmp_path_factory.mktemp("bench-results")),
            "BENCH_DEMO_MODEL": str(demo_model)}


def run(env: dict, script: str, *args: str) -> dict:
    """Run bench/<script>; the JSON it wrote."""
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = proc.stdout.rsplit("wrote ", 1)[1].strip()
    return json.loads(Path(written).read_text())


def test_overhead_reports_direct_and_end_to_end(bench_env):
    r = run(bench_env, "overhead.py", "--size", "64", "--steps", "2", "--runs", "2")
    assert {"direct", "e2e", "overhead_ms", "ratio_direct_over_e2e", "targets", "machine"} <= r.keys()
    assert {"median_s", "p95_s", "cpu_s"} <= r["e2e"].keys()


def test_control_plane_loses_no_task(bench_env):
    r = run(bench_env, "control_plane.py", "--tasks", "12", "--concurrency", "1", "4", "--no-baseline")
    assert [level["concurrency"] for level in r["levels"]] == [1, 4]
    for level in r["levels"]:
        d = level["diffbus"]
        assert {"accepted_per_s", "completed_per_s"} <= d["burst"].keys()
        assert {"p50", "p95", "p99"} == d["closed_loop"]["latency_ms"].keys()
        assert d["submitted"] >= 24 and d["never_completed"] == 0
    assert r["lost"] == {"diffbus": 0}


def test_batching_reports_on_and_off(bench_env):
    r = run(bench_env, "batching.py", "--jobs", "3", "--size", "64", "--steps", "2", "--rounds", "1")
    for mode in ("off", "on"):
        assert {"images_per_s", "first_image_s", "median_latency_s", "largest_batch"} <= r[mode].keys()
    assert r["off"]["largest_batch"] == 1
    assert {"images_per_s", "first_image_latency", "median_latency"} <= r["ratio_on_over_off"].keys()


def test_gpu_benchmark_runs_tiny_on_any_machine(bench_env):
    r = run(bench_env, "gpu.py", "--tiny")
    assert r["model"] == "demo (tiny)"
    for name in ("plain", "unbatched", "batched_4", "batched_8"):
        assert r[name]["images_per_s"] > 0
    assert r["unbatched"]["images"] == r["plain"]["images"]


def test_projector_restart_reports_both_starts_and_does_not_rebuild(bench_env):
    r = run(bench_env, "projector_restart.py", "--tasks", "300")
    assert r["events"] == 900 and r["restart_rebuilt"] is False
    assert {"fill_s", "first_start_s", "restart_s", "machine"} <= r.keys()
