"""compose/: the fleet's docker-compose file validates, every service's environment makes a valid
diffbus config for a cluster with S3, the local override changes only what it says, and the NATS
node configs parse. No Docker engine needed: tests/test_fleet_containers.py runs the fleet."""

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


def compose(*args: str, files: tuple[str, ...] = ("docker-compose.yml",)) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", *(a for f in files for a in ("-f", str(COMPOSE / f))),
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
    assert DIFFBUS_SERVICES | {"nats-1", "nats-2", "nats-3", "s3"} <= set(services)
    for name in DIFFBUS_SERVICES:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        config = load(COMPOSE / "config.yaml", environ=env)
        assert config.nats.urls == ["nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222"], name
        assert config.nats.replicas == 3 and config.nats.password
        assert config.storage.backend == "s3" and config.storage.endpoint == "http://s3:9000"
        assert config.notifier.secret.startswith("whsec_")
        assert services[name]["image"] == services["api-1"]["image"]  # one image for all
    assert [k.key for k in load(COMPOSE / "config.yaml", environ={
        k: str(v) for k, v in services["api-1"]["environment"].items()}).api_keys]
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]


@needs_compose
def test_the_local_override_changes_only_what_it_says():
    """docker-compose.local.yml: cpu-worker is gpu-worker on the CPU without the GPU reservation
    (gpu-worker waits in the `gpu` profile), and NATS and S3 run the diffbus image."""
    out = compose("config", files=("docker-compose.yml", "docker-compose.local.yml"))
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    gpu, cpu = services["gpu-worker"], services["cpu-worker"]
    assert gpu["profiles"] == ["gpu"] and "deploy" in gpu and "deploy" not in cpu
    assert {**gpu["environment"], "DIFFBUS_WORKER__DEVICE": "cpu"} == cpu["environment"]
    assert (gpu["command"], gpu["depends_on"], gpu["restart"]) == (cpu["command"], cpu["depends_on"], cpu["restart"])
    assert sorted(v.replace("gpu-worker:", "cpu-worker:") for v in gpu["volumes"]) == sorted(cpu["volumes"])
    assert {s["image"] for s in services.values()} == {"diffbus:latest"}
    assert services["s3"]["entrypoint"] == ["weed"] and services["nats-1"]["entrypoint"] == ["nats-server"]


def test_nats_node_configs_parse():
    for conf in sorted((COMPOSE / "nats").glob("*.conf")):
        out = subprocess.run([nats_server_binary(), "-c", str(conf), "-t"], capture_output=True, text=True,
                             env={**os.environ, "NATS_USER": "u", "NATS_PASSWORD": "p"}, timeout=30)
        assert out.returncode == 0, out.stderr
