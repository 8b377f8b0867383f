"""Image storage: the Storage protocol, its JetStream object store backend (the default), and
`open_storage`, which picks the backend from config (S3 lives in services/s3storage.py)."""

import mimetypes
from collections.abc import Callable
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError

from schemas import subjects

from . import telemetry
from .config import Config


FileUrl = Callable[[str], str]  # storage key -> download URL: Storage.url bound to the API's base URL


class StorageError(Exception):
    """Storage cannot be used as configured (unreachable, refused credentials); the message says why."""


class Storage(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> int: ...

    def url(self, key: str, api_base_url: str) -> str:
        """Where a client downloads `key`: through the API (`api_base_url`/files/...) or straight
        from the store. The one function every dialect and webhook builds result URLs with."""
        ...

    async def check(self) -> None:
        """Raise StorageError when the store cannot be used (for /health and start-up)."""
        ...


async def open_storage(config: Config, js: JetStreamContext) -> Storage:
    """The configured backend, checked: bad credentials or an unreachable store raise StorageError
    here, at start, rather than on the first job."""
    if config.storage.backend == "s3":
        from .s3storage import S3Storage

        store: Storage = S3Storage(config.storage)
    else:
        store = ObjectStoreStorage(js)
    await store.check()
    return store


def stage_prefix(task_id: str) -> str:
    """Where a task's intermediate images (stage_key) live."""
    return f"stages/{task_id}/"


def content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def input_key(sha256_hex: str, extension: str) -> str:
    return f"inputs/{sha256_hex}.{extension}"


def result_key(task_id: str, index: int, extension: str) -> str:
    return f"results/{task_id}/{index}.{extension}"


def stage_key(task_id: str, stage: str, index: int) -> str:
    """An intermediate image handed from one stage of a task to the next."""
    return f"stages/{task_id}/{stage}-{index}.png"


class ObjectStoreStorage:
    """Objects in the JetStream object store bucket `images`: nothing to run beside nats-server."""

    def __init__(self, js: JetStreamContext):
        self._js = js
        self._store = None

    async def _bucket(self):
        if self._store is None:
            self._store = await self._js.object_store(subjects.IMAGES_BUCKET)
        return self._store

    async def put(self, key: str, data: bytes) -> None:
        with telemetry.span("storage.put", key=key, backend="nats"):
            await (await self._bucket()).put(key, data)

    async def get(self, key: str) -> bytes | None:
        try:
            return (await (await self._bucket()).get(key)).data
        except (ObjectNotFoundError, NotFoundError):
            return None

    async def delete(self, key: str) -> None:
        try:
            await (await self._bucket()).delete(key)
        except (ObjectNotFoundError, NotFoundError):
            pass

    async def delete_prefix(self, prefix: str) -> int:
        store = await self._bucket()
        try:
            names = [info.name for info in await store.list(ignore_deletes=True) if info.name.startswith(prefix)]
        except NotFoundError:  # an empty bucket lists as not found
            return 0
        for name in names:
            await self.delete(name)
        return len(names)

    def url(self, key: str, api_base_url: str) -> str:
        return f"{api_base_url}/files/{key}"

    async def check(self) -> None:
        try:
            await self._bucket()
        except Exception as e:  # noqa: BLE001 - any failure means the store is not usable
            raise StorageError(f"the JetStream object store {subjects.IMAGES_BUCKET!r} is not reachable: {e}") from e
