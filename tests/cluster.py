"""A 3-node nats-server cluster with JetStream on loopback: three processes, each with its own store
dir and monitoring port, routes between them (the same shape as compose/nats/*.conf)."""

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from services.cli.embedded import nats_server_binary, terminate, wait_for_info

from .weed import free_ports

CLUSTER_NAME = "diffbus"


class Node:
    def __init__(self, root: Path, name: str, client: int, route: int, monitor: int):
        self.root, self.name = root, name
        self.client_port, self.route_port, self.monitor_port = client, route, monitor
        self.url = f"nats://127.0.0.1:{client}"
        self.proc: subprocess.Popen | None = None

    def config(self, routes: list[int]) -> str:
        return (f'server_name: {self.name}\nlisten: "127.0.0.1:{self.client_port}"\n'
                f'http: "127.0.0.1:{self.monitor_port}"\n'
                f'jetstream {{\n  store_dir: "{self.root / "store"}"\n  max_memory_store: 256MB\n'
                f'  max_file_store: 2GB\n}}\n'
                f'cluster {{\n  name: {CLUSTER_NAME}\n  listen: "127.0.0.1:{self.route_port}"\n'
                f'  routes: [{", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)}]\n}}\n')

    def start(self, routes: list[int]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "server.conf"
        conf.write_text(self.config(routes))
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=log, start_new_session=True)
        wait_for_info("127.0.0.1", self.client_port, proc=self.proc)

    def monitor(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2) as r:
                return json.load(r)
        except (OSError, ValueError):
            return None

    def client_names(self) -> list[str]:
        return [c.get("name", "") for c in (self.monitor("/connz?limit=1024") or {}).get("connections", [])]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        terminate(self.proc, 10)


class NatsCluster:
    def __init__(self, root: Path, size: int = 3):
        ports = free_ports(3 * size)
        self.nodes = [Node(root / f"n{i + 1}", f"n{i + 1}", *ports[3 * i:3 * i + 3]) for i in range(size)]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 60) -> "NatsCluster":
        routes = [n.route_port for n in self.nodes]
        for node in self.nodes:
            node.start(routes)
        # Ready when every node reports JetStream healthy (a meta leader elected, routes up).
        deadline = time.monotonic() + timeout
        while not all((n.monitor("/healthz") or {}).get("status") == "ok" for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not healthy after {timeout}s: "
                                   f"{[n.monitor('/healthz') for n in self.nodes]}")
            time.sleep(0.2)
        return self

    def node_of(self, client_name: str) -> Node | None:
        """The live node a client (by its connection name) is connected to."""
        return next((n for n in self.nodes if n.proc.poll() is None and client_name in n.client_names()), None)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
