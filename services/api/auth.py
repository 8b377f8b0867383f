"""API keys: which key is which owner, and whether it is an admin (sees every owner's tasks)."""

import hashlib
import hmac
from dataclasses import dataclass

from services.config import ApiKey, Config, ConfigError


@dataclass(frozen=True)
class Principal:
    owner: str  # the stable id recorded with tasks (ApiKey.owner), never a display name
    admin: bool = False
    name: str | None = None  # for display only

    def may_see(self, owner: str) -> bool:
        return self.admin or hmac.compare_digest(self.owner.encode(), owner.encode())


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()  # any header or query text


class Keyring:
    def __init__(self, keys: list[ApiKey]):
        if not keys:
            raise ConfigError("no API keys: list them under api.keys in config.yaml "
                              "(`diffbus up` creates one in data/api-key when none is configured)")
        # Looked up by digest, so the comparison does not leak the key through timing.
        self._by_digest = {_digest(k.key): Principal(k.owner, k.admin, k.name) for k in keys}

    @classmethod
    def from_config(cls, config: Config) -> "Keyring":
        keys = config.api_keys
        if not keys and config.api_key_file.exists():
            keys = [ApiKey(key=config.api_key_file.read_text().strip(), name="default")]
        return cls(keys)

    @property
    def secret(self) -> bytes:
        """A secret known to every API replica with this config (derived from the keys): names inputs."""
        return hashlib.sha256(b"diffbus inputs\n" + b"".join(sorted(self._by_digest))).digest()

    def lookup(self, secret: str | None) -> Principal | None:
        return self._by_digest.get(_digest(secret)) if secret else None
