"""S3-compatible storage (MinIO, SeaweedFS, AWS S3) through the minio SDK.

Result URLs are `public_base_url/<key>` when config sets one (a public bucket or a CDN in front of
it), else presigned GET URLs, computed locally (the region is configured, so no round trip). The
SDK blocks, so every call runs in a thread."""

import asyncio
import io
from datetime import timedelta
from urllib.parse import quote, urlsplit

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from ..config import StorageConfig
from ..observability import telemetry
from . import StorageError, content_type

REFUSED_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                       "ExpiredToken"}
NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}


def client(cfg: StorageConfig, endpoint: str | None = None) -> Minio:
    """A minio client for `endpoint` (default cfg.endpoint), given as host:port or as a URL (its
    scheme sets https)."""
    endpoint, secure = endpoint or cfg.endpoint or "", cfg.secure
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        endpoint, secure = parts.netloc, parts.scheme == "https"
    # Fail fast (a few seconds) rather than minio's default of retrying for minutes.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60), maxsize=16,
                               retries=urllib3.Retry(total=2, backoff_factor=0.2,
                                                     status_forcelist=[500, 502, 503, 504]))
    return Minio(endpoint, access_key=cfg.access_key, secret_key=cfg.secret_key, secure=secure,
                 region=cfg.region, http_client=http)


class S3Storage:
    def __init__(self, cfg: StorageConfig):
        self.cfg = cfg
        self.bucket = cfg.bucket
        self.s3 = client(cfg)
        self.signer = client(cfg, cfg.public_endpoint) if cfg.public_endpoint else self.s3  # signs, never connects

    async def put(self, key: str, data: bytes) -> None:
        with telemetry.span("storage.put", key=key, backend="s3"):
            await asyncio.to_thread(self.s3.put_object, self.bucket, key, io.BytesIO(data), len(data),
                                    content_type=content_type(key))

    async def get(self, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                response = self.s3.get_object(self.bucket, key)
            except S3Error as e:
                if e.code in NOT_FOUND:
                    return None
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await asyncio.to_thread(read)

    async def exists(self, key: str) -> bool:
        def stat() -> bool:
            try:
                self.s3.stat_object(self.bucket, key)
            except S3Error as e:
                if e.code in NOT_FOUND | {"ResourceNotFound"}:  # a HEAD of a missing key
                    return False
                raise
            return True

        return await asyncio.to_thread(stat)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.s3.remove_object, self.bucket, key)  # S3 deletes are idempotent

    async def delete_prefix(self, prefix: str) -> int:
        def remove() -> int:
            names = [o.object_name for o in self.s3.list_objects(self.bucket, prefix=prefix, recursive=True)]
            errors = list(self.s3.remove_objects(self.bucket, [DeleteObject(n) for n in names]))
            if errors:
                raise StorageError(f"could not delete {len(errors)} object(s) under {prefix}: {errors[0]}")
            return len(names)

        return await asyncio.to_thread(remove)

    def url(self, key: str, api_base_url: str) -> str:
        if self.cfg.public_base_url:
            return f"{self.cfg.public_base_url.rstrip('/')}/{quote(key)}"
        return self.signer.presigned_get_object(self.bucket, key, expires=timedelta(seconds=self.cfg.presign_ttl))

    async def check(self) -> None:
        """The credentials are accepted and the bucket exists (created when missing)."""
        def ensure_bucket() -> None:
            if not self.s3.bucket_exists(self.bucket):
                try:
                    self.s3.make_bucket(self.bucket)
                except S3Error as e:  # another service created it between the two calls
                    if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        where = f"S3 storage at {self.cfg.endpoint} (bucket {self.bucket!r})"
        try:
            await asyncio.to_thread(ensure_bucket)
        except S3Error as e:
            if e.code in REFUSED_CREDENTIALS:
                raise StorageError(f"{where} refused the credentials (storage.access_key / storage.secret_key): "
                                   f"{e.code}") from None
            raise StorageError(f"{where}: {e.code}: {e.message}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise StorageError(f"{where} is not reachable: {e}") from None
