"""api service: the HTTP server, connected to NATS, until SIGINT/SIGTERM."""

import contextlib
import logging

from aiohttp import web

from services import bus, lifecycle, storage
from services.config import Config
from services.lifecycle import stop_event

from .app import create_app
from .auth import Keyring
from .context import ApiContext
from .prompts import LoraCatalog
from .tasks import Tasks
from .workers import WorkerDirectory

log = logging.getLogger("diffbus.api")


async def run(config: Config) -> None:
    """Open in order, serve until SIGINT/SIGTERM; the stack closes in reverse: the HTTP server first,
    then the workers watch, then the connection (drained)."""
    keyring = Keyring.from_config(config)
    async with contextlib.AsyncExitStack() as stack:
        nc = await stack.enter_async_context(bus.serving(config, "api"))
        js = nc.jetstream()
        store = await storage.open_storage(config, js)
        workers = WorkerDirectory(js, stale_after_s=3 * config.worker.announce_every_s)
        await workers.start()
        stack.push_async_callback(workers.stop)
        nc.after_reconnect("workers watch", workers.restart)
        tasks = Tasks(config, nc, store, input_secret=keyring.secret)
        app = create_app(ApiContext(config=config, keyring=keyring, tasks=tasks, workers=workers,
                                    loras=LoraCatalog(workers)))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, config.api.host, config.api.port).start()
        log.info("api listening on http://%s:%d", config.api.host, config.api.port)
        lifecycle.started()
        await stop_event().wait()
