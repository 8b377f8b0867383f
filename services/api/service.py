"""api service: the HTTP server, connected to NATS, until SIGINT/SIGTERM."""

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
    keyring = Keyring.from_config(config)
    nc = await bus.connect(config, "api")
    js = nc.jetstream()
    await bus.ensure(js, config)
    try:
        store = await storage.open_storage(config, js)
    except storage.StorageError:
        await nc.close()
        raise
    workers = WorkerDirectory(js, stale_after_s=3 * config.worker.announce_every_s)
    await workers.start()
    nc.after_reconnect("workers watch", workers.restart)
    tasks = Tasks(config, nc, store, input_secret=keyring.secret)
    app = create_app(ApiContext(config=config, keyring=keyring, tasks=tasks, workers=workers, loras=LoraCatalog(workers)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.api.host, config.api.port)
        await site.start()
        log.info("api listening on http://%s:%d", config.api.host, config.api.port)
        lifecycle.started()
        await stop_event().wait()
    finally:
        await runner.cleanup()
        await workers.stop()
        await nc.drain()
