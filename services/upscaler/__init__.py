"""upscaler: super-resolution models through spandrel, tiled; Lanczos and Nearest without a model."""

import asyncio

from services.config import Config


def main(config: Config) -> None:
    from .service import run

    asyncio.run(run(config))
