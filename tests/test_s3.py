"""S3 storage against a real `weed mini`: where images land, the URLs users get, and refusing to start
with credentials the store does not accept. (The whole generate suite also runs on S3: test_generate.)"""

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest
import yaml

from services.config import StorageConfig
from services.storage.s3 import S3Storage
from services.storage import StorageError

from .conftest import Client, decode_image, png_data_uri, s3_storage

BUCKET = "diffbus-results"


@pytest.fixture
async def client(s3_stack):
    async with aiohttp.ClientSession() as session:
        yield Client(session, s3_stack.base_url)


def fetch(url: str) -> tuple[int, bytes]:
    """A plain HTTP client: no S3 SDK, no session."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_results_are_presigned_s3_urls_a_plain_http_client_downloads(client, s3_server):
    task_id = await client.submit({"prompt": "a red cat", "num_images": 2, "num_inference_steps": 2})
    task = await client.wait(task_id)
    assert task["status"] == "completed", task
    for i, url in enumerate(task["result_urls"]):
        parts = urlsplit(url)
        assert parts.netloc == s3_server.endpoint  # straight from S3, not through the API
        key = parts.path.removeprefix(f"/{BUCKET}/")
        assert key.startswith("results/") and key.endswith(f"/{i}.png") and task_id not in key
        assert "X-Amz-Signature=" in parts.query
        status, body = await asyncio.to_thread(fetch, url)
        assert status == 200
        assert decode_image(body).size == (64, 64)
        stored = s3_server.client().get_object(BUCKET, key)
        try:
            assert stored.read() == body
        finally:
            stored.close()
            stored.release_conn()
    tampered = task["result_urls"][0].replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert (await asyncio.to_thread(fetch, tampered))[0] == 403


async def test_input_images_are_stored_in_s3_by_content(client, s3_server):
    task, _ = await client.generate({"prompt": "x", "init_image": png_data_uri(64, 64), "strength": 0.5,
                                     "num_inference_steps": 4})
    inputs = [o.object_name for o in s3_server.client().list_objects(BUCKET, prefix="inputs/", recursive=True)]
    assert any(name.endswith(".png") and len(name) == len("inputs/") + 40 + 4 for name in inputs), inputs


def storage_config(server, **overrides) -> StorageConfig:
    return msgspec.convert(s3_storage(server, **overrides), StorageConfig)


async def test_missing_bucket_is_created_and_a_task_prefix_deleted(s3_server):
    store = S3Storage(storage_config(s3_server, bucket="made-at-start"))
    await store.check()
    assert s3_server.client().bucket_exists("made-at-start")
    for key in ("results/t1/0.png", "results/t1/1.png", "stages/t1/base-0.png", "results/t2/0.png"):
        await store.put(key, b"png")
    assert await store.get("results/t1/1.png") == b"png"
    assert await store.delete_prefix("results/t1/") == 2
    assert await store.delete_prefix("stages/t1/") == 1
    assert await store.get("results/t1/0.png") is None
    assert await store.get("results/t2/0.png") == b"png"
    assert await store.exists("results/t2/0.png") and not await store.exists("results/t1/0.png")


def test_public_base_url_makes_plain_urls(s3_server):
    store = S3Storage(storage_config(s3_server, public_base_url="https://cdn.example.com/images/"))
    assert store.url("results/t 1/0.png", "http://api") == "https://cdn.example.com/images/results/t%201/0.png"


def test_presigned_urls_can_name_the_address_clients_use(s3_server):
    store = S3Storage(storage_config(s3_server, public_endpoint="https://images.example.com"))
    url = store.url("results/t1/0.png", "http://api")
    assert url.startswith("https://images.example.com/diffbus-results/results/t1/0.png?") and "X-Amz-Signature=" in url


def run_api(s3_stack, tmp_path, storage: dict) -> subprocess.CompletedProcess:
    config = yaml.safe_load(s3_stack.config_path.read_text())
    config["storage"] = storage
    config["api"]["port"] = 0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "services.cli", "api", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_wrong_s3_credentials_api_refuses_to_start(s3_stack, s3_server, tmp_path):
    out = run_api(s3_stack, tmp_path, s3_storage(s3_server, secret_key="not-the-secret"))
    assert out.returncode == 2
    assert "refused the credentials" in out.stderr and s3_server.endpoint in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_s3_api_refuses_to_start(s3_stack, s3_server, tmp_path):
    out = run_api(s3_stack, tmp_path, s3_storage(s3_server, endpoint="http://127.0.0.1:9"))
    assert out.returncode == 2
    assert "is not reachable" in out.stderr, out.stderr


async def test_health_reports_s3_storage(s3_stack):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{s3_stack.base_url}/health") as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["dependencies"]["storage"] == {"ok": True, "backend": "s3"}


async def test_storage_check_names_refused_credentials(s3_server):
    with pytest.raises(StorageError, match="refused the credentials"):
        await S3Storage(storage_config(s3_server, access_key="nobody")).check()


async def test_deleting_a_task_deletes_its_objects(client, s3_server):
    task, _ = await client.generate({"prompt": "x", "num_images": 2, "num_inference_steps": 2})
    task_id = task["task_id"]
    prefix = urlsplit(task["result_urls"][0]).path.removeprefix(f"/{BUCKET}/").rsplit("/", 1)[0] + "/"

    def listed() -> list[str]:
        return [o.object_name for o in s3_server.client().list_objects(BUCKET, prefix=prefix, recursive=True)]

    assert len(listed()) == 2
    resp = await client.session.delete(f"{client.base_url}/api/v1/tasks/{task_id}", headers=client.headers())
    assert resp.status in (200, 204), await resp.text()
    assert listed() == []
    assert (await asyncio.to_thread(fetch, task["result_urls"][0]))[0] == 404
