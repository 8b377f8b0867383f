"""projector: the only writer of the task database."""

import asyncio

from services.config import Config


def main(config: Config, rebuild: bool = False) -> None:
    from .service import run

    asyncio.run(run(config, rebuild=rebuild))
