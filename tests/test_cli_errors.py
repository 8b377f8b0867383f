"""Start-up errors as a user meets them: one clear line on stderr and a non-zero exit code, never a
traceback."""

import errno
import socket
import subprocess
import sys

import yaml

from services.cli import errors
from services.config import ConfigError


def diffbus(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_up_with_its_nats_port_taken_says_so_and_exits_3(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                          "nats": {"url": f"nats://127.0.0.1:{port}"}}))
        done = diffbus("up", "--config", str(config))
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert f"diffbus up: port {port} on 127.0.0.1 is already in use" in done.stderr.splitlines()[-1]


def test_a_bad_config_names_the_field_and_exits_2(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("api:\n  port: high\n")
    done = diffbus("projector", "--config", str(config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("diffbus projector: ")
    assert "$.api.port" in done.stderr


def test_errors_map_to_exit_codes_and_a_bug_keeps_its_traceback():
    assert errors.describe(ConfigError("bad")) == (2, "bad")
    in_use = OSError(errno.EADDRINUSE, "address already in use")
    assert errors.describe(in_use)[0] == 3  # the API's port taken
    assert errors.describe(ConnectionRefusedError(111, "refused"))[0] == 3
    assert errors.describe(KeyboardInterrupt()) == (130, "interrupted")
    assert errors.describe(TypeError("a bug")) is None
