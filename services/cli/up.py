"""`diffbus up`: nats-server and every service on one machine, supervised.

Services run as child processes (as in a fleet, just closer together); one that dies is restarted.
Ctrl-C or SIGTERM stops them in order (api first, nats-server last) so in-flight work settles.
"""

import base64
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..config import Config
from .embedded import EmbeddedNats, EmbeddedNatsError, terminate
from ..lifecycle import die_with_parent

log = logging.getLogger("diffbus.up")

SERVICES = ("projector", "notifier", "upscaler", "gpu-worker", "api")  # start order; stopped in reverse
NATS_SERVER = "nats-server"  # the embedded one: watched and restarted like a service, stopped last (by `up`)
STOP_TIMEOUT_S = 20.0


def ensure_api_key(config: Config) -> None:
    """With no keys configured, create one in data/api-key on first start and show it once."""
    if config.api.keys:
        return
    path = config.api_key_file
    if path.exists():
        log.info("using the API key in %s", path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    path.write_text(key + "\n")
    path.chmod(0o600)
    host = "127.0.0.1" if config.api.host in ("0.0.0.0", "::") else config.api.host
    print(f"\nCreated an API key in {path} (shown once; it stays in that file):\n\n  {key}\n\n"
          f"Try it:\n  curl -s -X POST http://{host}:{config.api.port}/api/v1/generate "
          f"-H 'Content-Type: application/json' -H '{config.api.key_header}: {key}' "
          "-d '{\"prompt\": \"a lighthouse at dusk\", \"seed\": 42}'\n", flush=True)


def ensure_webhook_secret(config: Config) -> None:
    """With no notifier.secret configured, create one in data/webhook-secret on first start."""
    path = config.webhook_secret_file
    if config.notifier.secret or path.exists():
        return
    path.write_text("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    path.chmod(0o600)
    print(f"Created the webhook signing secret in {path}: receivers verify webhooks with it.", flush=True)


class Supervisor:
    def __init__(self, config: Config, nats_url: str, nats: EmbeddedNats | None = None):
        self.config = config
        self.nats_url = nats_url
        self.nats = nats
        self.children: dict[str, subprocess.Popen] = {} if nats is None else {NATS_SERVER: nats.proc}
        self.restarts: dict[str, int] = {}
        self.stopping = False

    def command(self, service: str) -> list[str]:
        cmd = [sys.executable, "-m", "services.cli", service, "--nats", self.nats_url]
        return cmd + (["--config", self.config.source] if self.config.source else [])

    def env(self, service: str) -> dict[str, str] | None:
        """With metrics.port set, each service but the API (which has /metrics) gets its own port
        from there on, in start order."""
        port = self.config.metrics.port
        if not port or service == "api":
            return None
        return {**os.environ, "DIFFBUS_METRICS__PORT": str(port + SERVICES.index(service))}

    def spawn(self, service: str) -> None:
        if service == NATS_SERVER:
            self._restart_nats()
            return
        self.children[service] = subprocess.Popen(self.command(service), start_new_session=True,
                                                  preexec_fn=die_with_parent, env=self.env(service))

    def _restart_nats(self) -> None:
        """The same server on the same store dir: services reconnect and make again what it lost."""
        try:
            self.nats.start()
            log.info("nats-server restarted on %s (data in %s)", self.nats.url, self.nats.store_dir)
        except EmbeddedNatsError as e:
            log.error("nats-server did not start again: %s", e)
        if self.nats.proc is not None:  # else (its port taken) the dead one stays, to be tried again
            self.children[NATS_SERVER] = self.nats.proc

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        for service in SERVICES:
            self.spawn(service)
        next_start: dict[str, float] = {}
        while not self.stopping:
            time.sleep(0.2)
            for service, proc in list(self.children.items()):
                if proc.poll() is None or self.stopping:
                    continue
                if service not in next_start:
                    n = self.restarts[service] = self.restarts.get(service, 0) + 1
                    delay = min(30.0, 2.0 ** (n - 1))
                    log.warning("%s exited with code %s; restarting in %.0fs", service, proc.returncode, delay)
                    next_start[service] = time.monotonic() + delay
                elif time.monotonic() >= next_start[service]:
                    del next_start[service]
                    self.spawn(service)
        return 0

    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping:
            log.info("stopping (%s)", signal.Signals(signum).name)
        self.stopping = True

    def stop(self) -> None:
        for service in reversed(SERVICES):
            proc = self.children.get(service)
            if not terminate(proc, STOP_TIMEOUT_S):
                log.warning("%s did not stop in %.0fs; killed it", service, STOP_TIMEOUT_S)


def up(config: Config) -> int:
    config.data_path.mkdir(parents=True, exist_ok=True)
    ensure_api_key(config)
    ensure_webhook_secret(config)
    if config.uses_demo_model:
        log.info("serving the built-in 'demo' model (tiny, random weights: noise-like pictures). "
                 "To serve a real one, list it under `models:` in a config file and run "
                 "`make run CONFIG=config.yaml` (see README)")
    host = urlsplit(config.nats.url).hostname
    with contextlib.ExitStack() as stack:  # stopped in reverse: the services (api first), then nats-server
        nats = None
        if host in ("127.0.0.1", "localhost", "::1") and not config.nats.servers:  # a cluster runs on its own
            nats = EmbeddedNats(config.nats.url, Path(config.data_dir) / "nats").start()
            stack.callback(nats.stop)
            log.info("nats-server with JetStream on %s (data in %s)", nats.url, nats.store_dir)
        supervisor = Supervisor(config, ",".join(config.nats.urls), nats)
        stack.callback(supervisor.stop)
        return supervisor.run()
