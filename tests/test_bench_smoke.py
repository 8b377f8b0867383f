"""Each benchmark runs, tiny, and writes its results file. A benchmark is not a test: no timings here,
only that it works, reports what it should, and lost no task."""

import json
import os
import signal
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
                          timeout=1100, env=env)
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


@pytest.mark.timeout(1200)
def test_gpu_benchmark_runs_tiny_on_any_machine(bench_env):
    """SD 1.5 and Flux (a transformer and T5), both served by diffbus: plain loop, diffbus, settings,
    and for Flux memory with a quantized transformer; tiny; `bench/device.sh --tiny` runs every family."""
    r = run(bench_env, "gpu.py", "--tiny", "--families", "sd15", "flux")
    for name, family in r["families"].items():
        assert family["model"] == f"tiny {name}" and "process" not in family, family
        assert family["flops"]["per_image_tflop"] > 0 and family["bound_images_per_s"] > 0
        assert family["plain"]["images_per_s"] > 0 and family["plain"]["fraction_of_bound"] > 0
        assert family["settings"]["defaults"]["images_per_s"] > 0
    for family in r["families"].values():
        for name in ("unbatched", "batched_4", "batched_8"):
            assert family["diffbus"][name]["images_per_s"] > 0 and family["diffbus"][name]["time_to_first_image_s"] > 0
        assert family["diffbus"]["unbatched"]["images"] >= 2
    flux = r["families"]["flux"]
    assert flux["memory"]["quantize_fp8"]["images_per_s"] > 0 and "skipped" in flux["memory"]["quantize_nf4"]


WHEELS = Path(__file__).resolve().parent.parent / ".whl"


@pytest.mark.skipif(not any(WHEELS.glob("*.whl")),
                    reason=".whl/ is absent: `make bench-gpu-wheels` downloads what the rehearsal installs")
@pytest.mark.timeout(1200)
def test_device_script_rehearses_the_gpu_run_from_the_wheels_alone(tmp_path, demo_model):
    """bench/device.sh --tiny: the GPU host's packages and .whl/, nothing else; SD 1.5 through diffbus
    (every family: by hand, minutes); the stacks' logs beside the results."""
    env = {**os.environ, "OUT": str(tmp_path), "BENCH_DEMO_MODEL": str(demo_model), "FAMILIES": "sd15"}
    proc = subprocess.Popen(["bash", str(BENCH / "device.sh"), "--tiny"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=1100)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the benchmark's processes too (each stops its stack)
        proc.communicate(timeout=60)
        raise
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "diffusers 0." in out and "torch 2." in out
    r = json.loads((tmp_path / "gpu-tiny-cpu.json").read_text())
    sd15 = r["families"]["sd15"]
    assert "process" not in sd15 and sd15["plain"]["images_per_s"] > 0
    assert sd15["diffbus"]["batched_8"]["images"] >= 2
    assert sd15["settings"]["fuse_qkv"]["images_per_s"] > 0
    assert "==== sd15, batching on" in (tmp_path / "stacks-cpu.log").read_text()
    assert "wrote " in (tmp_path / "device-cpu.log").read_text()


def test_projector_restart_reports_both_starts_and_does_not_rebuild(bench_env):
    r = run(bench_env, "projector_restart.py", "--tasks", "300")
    assert r["events"] == 900 and r["restart_rebuilt"] is False
    assert {"fill_s", "first_start_s", "restart_s", "machine"} <= r.keys()


def test_history_benchmark_rebuilds_catches_up_and_pages(bench_env):
    r = run(bench_env, "history.py", "--tiny")
    assert r["tasks"] == 2000 and r["events"] == 6000  # accepted, started, and an end for each task
    assert r["rebuild"]["events_per_s"] > 0 and r["catch_up"]["events"] == 900
    for owner in ("busy", "key-1"):
        assert set(r["pages"][owner]) == {"native", "native_filtered", "fooocus", "fooocus_filtered", "one_task"}
        assert all(q["n"] == 10 and q["failed"] == 0 and q["p99_ms"] >= q["p50_ms"] > 0
                   for q in r["pages"][owner].values())
    assert r["sizes"]["db_bytes_per_task"] > 0 and r["sizes"]["stream_bytes_per_task"] > 0


def test_fleet_benchmark_dispatches_in_order_and_shares_fairly(bench_env):
    r = run(bench_env, "fleet.py", "--tiny")
    assert [level["workers"] for level in r["levels"]] == [1, 3]
    for level in r["levels"]:
        s = level["saturated"]
        assert s["tasks"] == level["workers"] * 3 and s["completed_per_s"] > 0 and s["workers_used"] == level["workers"]
        assert {"p50_ms", "p99_ms"} == level["paced"]["dispatch"].keys()
    on, off = r["fairness"]["runs"]
    assert on["fair_sharing"] and not off["fair_sharing"]
    assert off["a_tasks_started_before_b"] == 12  # first come, first served: B waits for all of A's
    assert on["a_tasks_started_before_b"] <= 3  # served in turn: at most one of A's per worker first
