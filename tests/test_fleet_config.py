"""Fleet settings as a user writes them: NATS server lists and credentials, S3, metrics ports."""

import ssl

import pytest

from services import bus
from services.cli.main import nats_override
from services.config import ConfigError, load
from services.cli.up import Supervisor


def test_one_url_or_a_cluster():
    assert load(environ={}).nats.urls == ["nats://127.0.0.1:4222"]
    cluster = load(environ={"DIFFBUS_NATS__SERVERS": "[nats://a:4222, nats://b:4222]", "DIFFBUS_NATS__REPLICAS": "3"})
    assert cluster.nats.urls == ["nats://a:4222", "nats://b:4222"] and cluster.nats.replicas == 3
    assert load(environ={}, nats=nats_override("nats://a:1,nats://b:2")).nats.urls == ["nats://a:1", "nats://b:2"]
    assert load(environ={}, nats=nats_override("nats://a:1")).nats.urls == ["nats://a:1"]


def test_streams_take_the_configured_replicas():
    from schemas import subjects

    spec = subjects.streams(30)[0]
    assert bus.stream_config(spec, 3).num_replicas == 3
    with pytest.raises(ConfigError, match="replicas"):
        load(environ={"DIFFBUS_NATS__REPLICAS": "7"})


def test_credentials_become_connect_options(tmp_path):
    options = bus.connect_options(load(environ={}, nats={"user": "u", "password": "p"}).nats)
    assert options == {"user": "u", "password": "p"}
    assert bus.connect_options(load(environ={}, nats={"token": "t"}).nats) == {"token": "t"}
    assert bus.connect_options(load(environ={}, nats={"creds": "/x.creds"}).nats) == {"user_credentials": "/x.creds"}
    ca = ssl.get_default_verify_paths().cafile
    if ca:
        assert isinstance(bus.connect_options(load(environ={}, nats={"tls_ca": ca}).nats)["tls"], ssl.SSLContext)


def test_s3_needs_its_endpoint_and_keys():
    with pytest.raises(ConfigError, match="endpoint, access_key and secret_key"):
        load(environ={"DIFFBUS_STORAGE__BACKEND": "s3"})
    with pytest.raises(ConfigError, match="presign_ttl"):
        load(environ={}, storage={"backend": "s3", "endpoint": "h:9000", "access_key": "a", "secret_key": "s",
                                  "presign_ttl": 8 * 86400})
    with pytest.raises(ConfigError):
        load(environ={"DIFFBUS_STORAGE__BACKEND": "gcs"})


def test_up_gives_each_service_its_own_metrics_port():
    config = load(environ={}, metrics={"port": 9300})
    supervisor = Supervisor(config, config.nats.url)
    ports = {s: supervisor.env(s)["DIFFBUS_METRICS__PORT"] for s in ("projector", "notifier", "upscaler", "gpu-worker")}
    assert sorted(ports.values()) == ["9300", "9301", "9302", "9303"]
    assert supervisor.env("api") is None  # the API has /metrics on its own port
    assert Supervisor(load(environ={}), "nats://x").env("gpu-worker") is None
