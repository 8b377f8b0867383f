"""State shared by every route, kept on the app under CTX."""

from dataclasses import dataclass

from aiohttp import web

from services.config import Config

from .auth import Keyring, Principal
from .prompts import LoraCatalog
from .tasks import Tasks
from .workers import WorkerDirectory


@dataclass
class ApiContext:
    config: Config
    keyring: Keyring
    tasks: Tasks
    workers: WorkerDirectory
    loras: LoraCatalog

    def base_url(self, request: web.Request) -> str:
        """Where result URLs point: the configured public base, else the origin the client used."""
        return (self.config.api.public_base_url or f"{request.scheme}://{request.host}").rstrip("/")

    def authenticate(self, request: web.Request, header: str) -> Principal | None:
        return self.keyring.lookup(request.headers.get(header))


CTX = web.AppKey("ctx", ApiContext)
