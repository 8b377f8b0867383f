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

    def file_url(self, request: web.Request, key: str) -> str:
        """Where a client downloads a stored image: the one function every dialect builds result
        URLs with (through the API's /files/, or straight from S3: public or presigned)."""
        return self.tasks.storage.url(key, self.base_url(request))

    def file_urls(self, request: web.Request):
        """file_url bound to this request: key -> URL (for views built later, e.g. in a live relay)."""
        base_url = self.base_url(request)
        return lambda key: self.tasks.storage.url(key, base_url)

    def authenticate(self, request: web.Request, header: str) -> Principal | None:
        return self.keyring.lookup(request.headers.get(header))


CTX = web.AppKey("ctx", ApiContext)
