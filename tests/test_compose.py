"""compose/: the fleet's docker-compose file validates, every service's environment makes a valid
diffbus config for a cluster with S3, and the NATS node configs parse. No Docker engine runs here,
so the deployment is validated, not run."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.config import load
from services.cli.embedded import nats_server_binary

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
DIFFBUS_SERVICES = {"api-1", "api-2", "projector", "notifier", "upscaler", "gpu-worker"}


def compose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "-f", str(COMPOSE / "docker-compose.yml"),
                           "--env-file", str(COMPOSE / ".env.example"), *args],
                          capture_output=True, text=True, timeout=60)


needs_compose = pytest.mark.skipif(shutil.which("docker-compose") is None,
                                   reason="docker-compose not installed (`make install` installs it as root)")


@needs_compose
def test_compose_file_validates():
    out = compose("config", "-q")
    assert out.returncode == 0, out.stderr


@needs_compose
def test_every_service_gets_a_valid_fleet_config():
    resolved = yaml.safe_load(compose("config").stdout)
    services = resolved["services"]
    assert DIFFBUS_SERVICES | {"nats-1", "nats-2", "nats-3", "minio"} <= set(services)
    for name in DIFFBUS_SERVICES:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        config = load(COMPOSE / "config.yaml", environ=env)
        assert config.nats.urls == ["nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222"], name
        assert config.nats.replicas == 3 and config.nats.password
        assert config.storage.backend == "s3" and config.storage.endpoint == "http://minio:9000"
        assert config.notifier.secret.startswith("whsec_")
        assert services[name]["image"] == services["api-1"]["image"]  # one image for all
    assert [k.key for k in load(COMPOSE / "config.yaml", environ={
        k: str(v) for k, v in services["api-1"]["environment"].items()}).api_keys]
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]


def test_nats_node_configs_parse():
    for conf in sorted((COMPOSE / "nats").glob("*.conf")):
        out = subprocess.run([nats_server_binary(), "-c", str(conf), "-t"], capture_output=True, text=True,
                             env={**os.environ, "NATS_USER": "u", "NATS_PASSWORD": "p"}, timeout=30)
        assert out.returncode == 0, out.stderr
