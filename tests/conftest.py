import asyncio
import base64
import contextlib
import io
import json
import subprocess
import sys
import urllib.request

import aiohttp
import nats
import pytest
from PIL import Image

from .stack import ALICE, Stack, wait_until
from .weed import ACCESS_KEY, SECRET_KEY, WeedMini


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    """The demo model, built once per session by the same command users have."""
    path = tmp_path_factory.mktemp("models") / "demo"
    subprocess.run([sys.executable, "-m", "services.cli", "demo-model", str(path)], check=True,
                   capture_output=True)
    return path


@pytest.fixture(scope="session")
def upscaler_models(tmp_path_factory):
    """Tiny random-weight upscaler files (.safetensors and .pth), built by `diffbus demo-upscalers`."""
    path = tmp_path_factory.mktemp("upscalers")
    subprocess.run([sys.executable, "-m", "services.cli", "demo-upscalers", str(path)], check=True,
                   capture_output=True)
    return path


@pytest.fixture(scope="session")
def loras(tmp_path_factory, demo_model):
    """Random LoRAs for the demo model (peft and kohya formats, and one matching no layer)."""
    path = tmp_path_factory.mktemp("loras")
    subprocess.run([sys.executable, "-m", "services.cli", "demo-loras", str(demo_model), str(path)], check=True,
                   capture_output=True)
    return path


def health(base_url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def wait_ready(stack: Stack, timeout: float = 90) -> None:
    wait_until(lambda: (health(stack.base_url) or {}).get("model_loaded"), timeout,
               "a worker to announce a loaded model", stack)


@contextlib.contextmanager
def running(stack: Stack):
    """Every service of `stack` started and ready; afterwards, none of them may have died."""
    stack.start_all()
    try:
        wait_ready(stack)
        yield stack
        assert not stack.crashed(), f"a service died during the tests:\n{stack.logs()}"
    finally:
        stack.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, demo_model, upscaler_models, loras):
    """One diffbus for the session: nats-server, projector, notifier, upscaler, one gpu worker, api."""
    with running(Stack(tmp_path_factory.mktemp("stack"), demo_model, upscaler_models, loras)) as s:
        yield s


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini`) on loopback for the session."""
    server = WeedMini(tmp_path_factory.mktemp("weed")).start()
    try:
        yield server
    finally:
        server.stop()


def s3_storage(server: WeedMini, **overrides) -> dict:
    """The `storage` config section for `server`."""
    return {"backend": "s3", "endpoint": f"http://{server.endpoint}", "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY, "bucket": "diffbus-results", **overrides}


@pytest.fixture(scope="session")
def s3_stack(tmp_path_factory, demo_model, s3_server):
    """The session's diffbus again, storing inputs and results in S3 (presigned URLs), and answering a
    synchronous FooocusAPI request with the task object, as newer FooocusAPI does."""
    with running(Stack(tmp_path_factory.mktemp("s3stack"), demo_model, storage=s3_storage(s3_server),
                       fooocus={"sync_reply": "json"})) as s:
        yield s


class Client:
    """A user of the native dialect."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, key: str = ALICE):
        self.session = session
        self.base_url = base_url
        self.key = key

    def headers(self, key: str | None = None) -> dict:
        return {"X-API-Key": key or self.key}

    async def post_generate(self, body: dict, key: str | None = None):
        return await self.session.post(f"{self.base_url}/api/v1/generate", json=body,
                                       headers=self.headers(key))

    async def submit(self, body: dict) -> str:
        resp = await self.post_generate(body)
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        assert answer["status"] == "pending"
        return answer["task_id"]

    async def task(self, task_id: str, key: str | None = None):
        return await self.session.get(f"{self.base_url}/api/v1/tasks/{task_id}", headers=self.headers(key))

    async def wait(self, task_id: str, timeout: float = 60) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            resp = await self.task(task_id)
            assert resp.status == 200, await resp.text()
            task = await resp.json()
            if task["status"] in ("completed", "failed", "cancelled"):
                return task
            await asyncio.sleep(0.1)
        raise AssertionError(f"task {task_id} not finished after {timeout}s")

    async def download(self, url: str) -> bytes:
        async with self.session.get(url) as resp:
            assert resp.status == 200, url
            return await resp.read()

    async def generate(self, body: dict) -> tuple[dict, list[bytes]]:
        """Submit, wait, download every image."""
        task = await self.wait(await self.submit(body))
        assert task["status"] == "completed", task
        urls = [task["result_url"]] if task["result_url"] else task["result_urls"]
        return task, [await self.download(u) for u in urls]


@pytest.fixture
async def client(stack):
    async with aiohttp.ClientSession() as session:
        yield Client(session, stack.base_url)


@pytest.fixture
async def js(stack):
    nc = await nats.connect(stack.nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest.fixture
async def bare_nc(tmp_path):
    """A connection to a nats-server of its own (no services), with diffbus's streams and buckets."""
    from services import bus
    from services.config import Config
    from services.cli.embedded import EmbeddedNats, free_port

    with EmbeddedNats(f"nats://127.0.0.1:{free_port()}", tmp_path / "jetstream") as server:
        nc = await nats.connect(server.url)
        await bus.ensure(nc.jetstream(), Config())
        yield nc
        await nc.close()


def png_data_uri(width: int, height: int, color=(200, 40, 40)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
