"""notifier: signed webhooks, retried, never lost."""

import asyncio

from services.config import Config


def main(config: Config) -> None:
    from .service import run

    asyncio.run(run(config))
