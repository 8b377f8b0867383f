"""Image storage: the Storage protocol, its JetStream object store backend (the default), and
`open_storage`, which picks the backend from config (S3 lives in services/storage/s3.py)."""

import asyncio
import base64
import hashlib
import json
import mimetypes
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import (
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DEFAULT_CHUNK_SIZE,
    OBJ_DIGEST_TEMPLATE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
)

from schemas import subjects

from ..config import Config
from ..observability import telemetry

ROLLUP = {api.Header.ROLLUP: "sub"}  # the message replaces every earlier one on its subject
FIRST = {**ROLLUP, "Nats-Expected-Last-Subject-Sequence": "0"}  # ... and there must be none
WRONG_LAST_SEQUENCE = 10071  # JetStream's answer when a FIRST message is not

FileUrl = Callable[[str], str]  # storage key -> download URL: Storage.url bound to the API's base URL


class StorageError(Exception):
    """Storage cannot be used as configured (unreachable, refused credentials); the message says why."""


class Storage(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def exists(self, key: str) -> bool: ...

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
        from .s3 import S3Storage

        store: Storage = S3Storage(config.storage)
    else:
        store = ObjectStoreStorage(js)
    await store.check()
    return store


def _digest(data: bytes) -> str:
    """The object store's digest of `data`, as its meta records it."""
    return OBJ_DIGEST_TEMPLATE.format(digest=base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode())


def stage_prefix(task_id: str) -> str:
    """Where a task's intermediate images (stage_key) live."""
    return f"stages/{task_id}/"


def content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


INPUT_PREFIX = "inputs/"  # input images, stored once per content


def input_key(sha256_hex: str, extension: str) -> str:
    return f"{INPUT_PREFIX}{sha256_hex}.{extension}"


def result_key(token: str, index: int, extension: str) -> str:
    """A result image's key: under a random `new_token()` per attempt, never under a name a client
    chose (a task id), so its URL is an unguessable capability and no result is written twice."""
    return f"results/{token}/{index}.{extension}"


def new_token() -> str:
    return secrets.token_urlsafe(18)


SERVED_PREFIXES = ("results/", "inputs/")  # what /files serves: not stages/ (named by task ids)


def stage_key(task_id: str, stage: str, index: int) -> str:
    """An intermediate image handed from one stage of a task to the next."""
    return f"stages/{task_id}/{stage}-{index}.png"


class ObjectStoreStorage:
    """Objects in the JetStream object store bucket `images`: nothing to run beside nats-server.

    Most images fit one chunk. Those are written with the chunk on a subject named after the key
    (`chunk_id`) and published with the meta in one round trip; a rewrite rolls the subject up, so no
    old chunk has to be looked up and purged. A read asks for the meta and that chunk at once. Larger
    objects go through nats-py's object store, and every object reads back with it too."""

    STREAM = OBJ_STREAM_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET)

    def __init__(self, js: JetStreamContext):
        self._js = js
        self._store = None

    async def _bucket(self):
        if self._store is None:
            self._store = await self._js.object_store(subjects.IMAGES_BUCKET)
        return self._store

    @staticmethod
    def chunk_id(key: str) -> str:
        """The chunk subject token of a one-chunk object written here (in place of a random nuid)."""
        return hashlib.sha256(key.encode()).hexdigest()[:22]

    @staticmethod
    def _chunks(nuid: str) -> str:
        """The subject of an object's chunks."""
        return OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET, obj=nuid)

    @classmethod
    def _subjects(cls, key: str) -> tuple[str, str]:
        """A key's meta subject and the chunk subject of a one-chunk object written here."""
        meta = base64.urlsafe_b64encode(key.encode()).decode()
        return OBJ_META_PRE_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET, obj=meta), cls._chunks(cls.chunk_id(key))

    async def put(self, key: str, data: bytes) -> None:
        with telemetry.span("storage.put", key=key, backend="nats"):
            bucket = await self._bucket()
            if not 0 < len(data) <= OBJ_DEFAULT_CHUNK_SIZE:
                await bucket.put(key, data)
                return
            meta_subject, chunk_subject = self._subjects(key)
            info = api.ObjectInfo(
                name=key, bucket=subjects.IMAGES_BUCKET, nuid=self.chunk_id(key), size=len(data), chunks=1,
                mtime=datetime.now(UTC).isoformat(), digest=_digest(data),
                options=api.ObjectMetaOptions(max_chunk_size=OBJ_DEFAULT_CHUNK_SIZE))
            # In order on one connection: the chunk is stored before the meta that names it. The meta
            # expects to be the key's first: a rewrite learns so and cleans up after the old object.
            stored = await asyncio.gather(
                self._js.publish(chunk_subject, data, headers=ROLLUP),
                self._js.publish(meta_subject, json.dumps(info.as_dict()).encode(), headers=FIRST),
                return_exceptions=True)
            if isinstance(stored[0], BaseException):
                if not isinstance(stored[1], BaseException):  # a meta naming no chunk must not stay
                    await self.delete(key)
                raise stored[0]
            if isinstance(stored[1], APIError) and stored[1].err_code == WRONG_LAST_SEQUENCE:
                await self._replace(key, meta_subject, info)
            elif isinstance(stored[1], BaseException):
                raise stored[1]

    async def _replace(self, key: str, meta_subject: str, info: api.ObjectInfo) -> None:
        """Rewrite a key's meta, and purge the old chunks when they were elsewhere (a larger object)."""
        try:
            old = await (await self._bucket()).get_info(key)
        except (ObjectNotFoundError, NotFoundError):
            old = None
        await self._js.publish(meta_subject, json.dumps(info.as_dict()).encode(), headers=ROLLUP)
        if old is not None and old.nuid != info.nuid:
            await self._js.purge_stream(self.STREAM, subject=self._chunks(old.nuid))

    async def get(self, key: str) -> bytes | None:
        meta_subject, chunk_subject = self._subjects(key)
        meta, chunk = await asyncio.gather(self._js.get_last_msg(self.STREAM, meta_subject),
                                           self._js.get_last_msg(self.STREAM, chunk_subject),
                                           return_exceptions=True)
        if isinstance(meta, NotFoundError):
            return None
        if not isinstance(meta, BaseException):
            info = api.ObjectInfo.from_response(json.loads(meta.data))
            if info.deleted:
                return None
            if (info.nuid == self.chunk_id(key) and not isinstance(chunk, BaseException)
                    and info.digest == _digest(chunk.data)):
                return chunk.data
        return await self._get_any(key)

    async def _get_any(self, key: str) -> bytes | None:
        """Any object, however it was written (or one replaced while `get` read it)."""
        bucket = await self._bucket()
        for _ in range(2):  # twice: the object may be replaced between reading its info and its chunk
            try:
                info = await bucket.get_info(key)
            except (ObjectNotFoundError, NotFoundError):
                return None
            if info.chunks != 1:
                break
            # One chunk: one direct read, not an ordered consumer created and deleted.
            try:
                msg = await self._js.get_last_msg(self.STREAM, self._chunks(info.nuid))
            except NotFoundError:
                continue
            if info.digest == _digest(msg.data):
                return msg.data
        try:
            return (await bucket.get(key)).data
        except (ObjectNotFoundError, NotFoundError):
            return None

    async def exists(self, key: str) -> bool:
        try:
            await (await self._bucket()).get_info(key)
        except (ObjectNotFoundError, NotFoundError):
            return False
        return True

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
