"""Building the Config: config.yaml, then DIFFBUS_* environment variables, then keyword overrides.

Environment overrides use `__` between levels: DIFFBUS_API__PORT=8001, DIFFBUS_NATS__URL=nats://h:4222.
Values are parsed as YAML, so numbers, booleans and lists work.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from .root import Config
from .sections import ConfigError

ENV_PREFIX = "DIFFBUS_"


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = tree.get(part)
        if not isinstance(node, dict):
            node = tree[part] = {}
        tree = node
    tree[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            path = name[len(ENV_PREFIX):].lower().split("__")
            _set_path(tree, path, yaml.safe_load(raw) if raw else None)
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _seed_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """sd_work_manager's own config keys, accepted so its config.yaml works as it is."""
    raw = dict(raw)
    for key, path in (("webApiListenHost", ["api", "host"]), ("webApiListenPort", ["api", "port"]),
                      ("webApiSecret", ["sdwm", "secret"])):
        if key in raw:
            _set_path(raw, path, raw.pop(key))
    if "storageDBUrl" in raw:  # sqlite::memory: or sqlite:<path>
        url = str(raw.pop("storageDBUrl"))
        if not url.startswith("sqlite:"):
            raise ConfigError(f"storageDBUrl {url!r}: only sqlite: URLs are supported")
        _set_path(raw, ["projector", "db"], url.removeprefix("sqlite:").removeprefix("//") or ":memory:")
    return raw


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
         **overrides: Any) -> Config:
    """Build the Config from a YAML file (optional), DIFFBUS_* variables and keyword overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    if "tasks_max_age_days" in raw:  # its name before retention.days
        _set_path(raw, ["retention", "days"], raw.pop("tasks_max_age_days"))
    raw = _merge(_seed_keys(raw), env_overrides(os.environ if environ is None else environ))
    raw = _merge(raw, overrides)
    if path is not None:
        raw["source"] = str(path)
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from e
