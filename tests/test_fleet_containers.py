"""The compose fleet in real containers (compose/docker-compose.yml + docker-compose.local.yml): the
image, the fleet up, a task through one API replica read through the other with its image in S3, a
NATS node killed with tasks in flight, and `down -v` leaving nothing behind.

Runs where a Docker engine answers and the image exists; skipped otherwise, with the reason. Building
the image takes minutes, longer than the suite may spend, so the tests use the image `make image`
left (DIFFBUS_TEST_IMAGE, default diffbus:latest) and build it only with DIFFBUS_TEST_BUILD_IMAGE=1
(`make image BASE_IMAGE=local`: from a Debian base made here, no Docker Hub)."""

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp
import nats
import pytest

from schemas import subjects

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
IMAGE = os.environ.get("DIFFBUS_TEST_IMAGE", "diffbus:latest")
ENV = {k: v for k, v in (line.split("=", 1) for line in (COMPOSE / ".env.example").read_text().splitlines()
                         if line and not line.startswith("#"))}
API_KEY = json.loads(ENV["API_KEYS"])[0]
JOB = {"prompt": "a lighthouse", "num_inference_steps": 2, "width": 64, "height": 64}
TASKS = 8
WEIGHT_FILES = ("safetensors", "ckpt", "pth", "pt", "bin", "onnx", "gguf")
DEADLINE_S = 180


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def engine_problem() -> str | None:
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        return "docker and docker-compose not installed"
    if docker("info", timeout=20).returncode != 0:
        return "no Docker engine answers (start dockerd)"
    if os.environ.get("DIFFBUS_TEST_BUILD_IMAGE") != "1" and docker("image", "inspect", IMAGE).returncode != 0:
        return f"no {IMAGE} image: run `make image BASE_IMAGE=local` first, or set DIFFBUS_TEST_BUILD_IMAGE=1"
    return None


SKIP_REASON = engine_problem()
BUILD = os.environ.get("DIFFBUS_TEST_BUILD_IMAGE") == "1"
pytestmark = [pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON)),
              pytest.mark.timeout(3600 if BUILD else 300)]  # a build from nothing takes minutes


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Fleet:
    """One compose project on free host ports."""

    def __init__(self):
        self.project = f"diffbus-test-{os.getpid()}"
        names = ("API_1_PORT", "API_2_PORT", "S3_PORT", "S3_CONSOLE_PORT", "NATS_1_PORT", "NATS_2_PORT", "NATS_3_PORT")
        self.ports = dict(zip(names, free_ports(len(names))))
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()}, "DIFFBUS_IMAGE": IMAGE,
                    "S3_PUBLIC_ENDPOINT": f"http://127.0.0.1:{self.ports['S3_PORT']}"}
        self.api = [f"http://127.0.0.1:{self.ports['API_1_PORT']}", f"http://127.0.0.1:{self.ports['API_2_PORT']}"]
        self.started = time.monotonic()
        self.nats = {f"nats-{i}": f"nats://127.0.0.1:{self.ports[f'NATS_{i}_PORT']}" for i in (1, 2, 3)}

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        out = subprocess.run(["docker-compose", "-p", self.project, "-f", str(COMPOSE / "docker-compose.yml"),
                              "-f", str(COMPOSE / "docker-compose.local.yml"), "--env-file",
                              str(COMPOSE / ".env.example"), *args],
                             capture_output=True, text=True, timeout=timeout, env=self.env)
        assert out.returncode == 0, out.stderr
        return out

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "30").stdout[-8000:]

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        return (docker("ps", "-aq", "--filter", label).stdout.split()
                + docker("volume", "ls", "-q", "--filter", label).stdout.split()
                + docker("network", "ls", "-q", "--filter", label).stdout.split())


def health(base_url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def wait_until(predicate, timeout: float, what: str, fleet: Fleet):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{fleet.logs()}"
        time.sleep(1)
    return value


@pytest.fixture(scope="module")
def image() -> str:
    if BUILD:
        out = subprocess.run(["make", "image", "BASE_IMAGE=local", f"IMAGE={IMAGE}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=3600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return IMAGE


@pytest.fixture(scope="module")
def fleet(image):
    f = Fleet()
    try:
        f.compose("up", "-d")
        for url in f.api:
            wait_until(lambda: (health(url) or {}).get("model_loaded"), 300, f"{url} to see a loaded model", f)
        print(f"\nfleet up and serving {time.monotonic() - f.started:.0f}s after `up -d`")
        yield f
    finally:
        f.compose("down", "-v", "--remove-orphans")


def test_the_image_runs_every_service_as_a_user_and_holds_no_weights(image):
    assert docker("image", "inspect", IMAGE, "--format", "{{.Config.User}}").stdout.strip() == "diffbus"
    for service in ("up", "api", "gpu-worker", "upscaler", "projector", "notifier"):
        out = docker("run", "--rm", IMAGE, service, "--help")
        assert out.returncode == 0 and "--config" in out.stdout, (service, out.stderr)
    weights = docker("run", "--rm", "--user", "root", "--entrypoint", "find", IMAGE, "/", "-xdev", "-size", "+1M",
                     "(", *" -o ".join(f"-name *.{ext}" for ext in WEIGHT_FILES).split(), ")")
    assert weights.returncode == 0 and weights.stdout.split() == [], weights.stderr
    assert docker("run", "--rm", "--entrypoint", "id", IMAGE, "-u").stdout.strip() == "1000"
    host = docker("run", "--rm", "--entrypoint", "python", IMAGE, "-c",
                  "from services.config import load; print(load().api.host)")
    assert host.stdout.strip() == "0.0.0.0", host.stderr  # `docker run -p 8000:8000 diffbus` reaches `up`'s API
    docs = docker("run", "--rm", "--entrypoint", "python", IMAGE, "-c",
                  "from services.api.docs import VENDOR; print(sorted(p.name for p in VENDOR.iterdir()))")
    assert "swagger-ui" in docs.stdout and "redoc" in docs.stdout, docs.stderr  # /docs and /redoc work


async def submit(session: aiohttp.ClientSession, base_url: str, key: str) -> str:
    """Submit a task, retrying on a 503 (same Idempotency-Key, so never two tasks) while NATS fails
    over; the API itself must answer every time."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        async with session.post(f"{base_url}/api/v1/generate", json={**JOB, "seed": len(key)},
                                headers={"X-API-Key": API_KEY, "Idempotency-Key": key}) as resp:
            if resp.status == 200:
                return (await resp.json())["task_id"]
            assert resp.status == 503, (resp.status, await resp.text())
            error = await resp.text()
        assert time.monotonic() < deadline, f"{key} not accepted: {error}"
        await asyncio.sleep(0.5)


async def wait_completed(session: aiohttp.ClientSession, base_url: str, ids: list[str], fleet: Fleet) -> dict:
    """Poll until every task is completed; every poll must get an HTTP answer."""
    deadline, done = time.monotonic() + DEADLINE_S, {}
    while len(done) < len(ids):
        assert time.monotonic() < deadline, f"unfinished: {set(ids) - set(done)}\n{fleet.logs()}"
        for task_id in set(ids) - set(done):
            async with session.get(f"{base_url}/api/v1/tasks/{task_id}", headers={"X-API-Key": API_KEY}) as resp:
                assert resp.status in (200, 503), (resp.status, await resp.text())
                task = await resp.json()
            assert task.get("status") != "failed", task
            if task.get("status") == "completed":
                done[task_id] = task
        await asyncio.sleep(0.5)
    return done


async def test_a_task_sent_to_one_api_is_read_through_the_other_with_its_image_in_s3(fleet):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        task_id = await submit(session, fleet.api[0], "compose-first")
        task = (await wait_completed(session, fleet.api[1], [task_id], fleet))[task_id]
    print(f"\nfirst task completed {time.monotonic() - fleet.started:.0f}s after `up -d`")
    restarts = {c: docker("inspect", "--format", "{{.RestartCount}}", c).stdout.strip()
                for c in fleet.compose("ps", "-q").stdout.split()}
    assert set(restarts.values()) == {"0"}, restarts  # every service waited for NATS and S3, none crashed
    assert task["result_url"].startswith(fleet.env["S3_PUBLIC_ENDPOINT"])
    with urllib.request.urlopen(task["result_url"], timeout=10) as resp:
        assert resp.read(8) == b"\x89PNG\r\n\x1a\n"


def stream_leader(fleet: Fleet, stream: str) -> str:
    probe = ("import json, urllib.request; d = json.load(urllib.request.urlopen("
             "'http://localhost:8222/jsz?streams=true')); print(json.dumps(d))")
    jsz = json.loads(fleet.compose("exec", "-T", "nats-1", "python", "-c", probe).stdout)
    for account in jsz.get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail["name"] == stream:
                return detail["cluster"]["leader"]
    raise AssertionError(f"no {stream} stream in {jsz}")


async def completed_events(fleet: Fleet, node_urls: list[str], ids: list[str]) -> dict[str, int]:
    nc = await nats.connect(node_urls, user=ENV["NATS_USER"], password=ENV["NATS_PASSWORD"])
    try:
        info = await nc.jetstream().stream_info(subjects.TASKS, subjects_filter=subjects.task_event("*", "completed"))
        counts = info.state.subjects or {}
        return {t: counts.get(subjects.task_event(t, "completed"), 0) for t in ids}
    finally:
        await nc.close()


async def test_killing_the_job_stream_leader_loses_no_task_and_runs_none_twice(fleet):
    victim = stream_leader(fleet, subjects.JOBS)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        ids = [await submit(session, fleet.api[0], f"compose-kill-{n}") for n in range(TASKS // 2)]
        assert docker("kill", fleet.compose("ps", "-q", victim).stdout.strip()).returncode == 0
        killed_at = time.monotonic()
        ids += [await submit(session, fleet.api[n % 2], f"compose-kill-{n}") for n in range(TASKS // 2, TASKS)]
        accepted_s = time.monotonic() - killed_at
        await wait_completed(session, fleet.api[1], ids, fleet)
        done_s = time.monotonic() - killed_at
        survivors = [url for name, url in fleet.nats.items() if name != victim]
        assert await completed_events(fleet, survivors, ids) == {t: 1 for t in ids}

        fleet.compose("start", victim)  # back: it catches up from its peers
        wait_until(lambda: "healthy" in docker("inspect", "--format", "{{.State.Health.Status}}",
                                               fleet.compose("ps", "-q", victim).stdout.strip()).stdout,
                   120, f"{victim} healthy again", fleet)
        again = await submit(session, fleet.api[1], "compose-after-restart")
        await wait_completed(session, fleet.api[0], [again], fleet)
        assert await completed_events(fleet, [fleet.nats[victim]], ids + [again]) == {t: 1 for t in ids + [again]}
    print(f"\n{victim} (the JOBS leader) killed: the other {TASKS // 2} tasks accepted in {accepted_s:.1f}s, "
          f"all {TASKS} completed {done_s:.1f}s after the kill")


def test_down_leaves_nothing_behind(fleet):
    assert len(fleet.leftovers()) >= 10 + 7 + 1  # containers, volumes, the network
    fleet.compose("down", "-v", "--remove-orphans")
    assert fleet.leftovers() == []
