"""API keys: which key is which owner, and whether it is an admin (sees every owner's tasks)."""

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from services.config import ApiKey, Config, ConfigError

KEY_FILE = "api-key"  # under data_dir: the key `diffbus up` generates when config names none


@dataclass(frozen=True)
class Principal:
    owner: str
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        return self.admin or hmac.compare_digest(self.owner, owner)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def owner_name(key: ApiKey) -> str:
    """The owner recorded with tasks: the key's configured name, else a digest (never the key)."""
    return key.name or "key-" + _digest(key.key).hex()[:12]


def key_file(config: Config) -> Path:
    return config.data_path / KEY_FILE


class Keyring:
    def __init__(self, keys: list[ApiKey]):
        if not keys:
            raise ConfigError("no API keys: list them under api.keys in config.yaml "
                              "(`diffbus up` creates one in data/api-key when none is configured)")
        # Looked up by digest, so the comparison does not leak the key through timing.
        self._by_digest = {_digest(k.key): Principal(owner_name(k), k.admin) for k in keys}

    @classmethod
    def from_config(cls, config: Config) -> "Keyring":
        keys = [k if isinstance(k, ApiKey) else ApiKey(key=k) for k in config.api.keys]
        if not keys and key_file(config).exists():
            keys = [ApiKey(key=key_file(config).read_text().strip(), name="default")]
        return cls(keys)

    def lookup(self, secret: str | None) -> Principal | None:
        return self._by_digest.get(_digest(secret)) if secret else None
