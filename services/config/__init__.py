"""Typed config, validated once at start and passed in: the sections of config.yaml (`sections`), the
whole and its cross-section checks (`root`), and how it is built from a file and DIFFBUS_* variables
(`loading`). Import from here: `from services.config import Config, load`."""

from .loading import ENV_PREFIX, env_overrides, load
from .root import Config
from .sections import (
    DEMO_MODEL,
    ApiConfig,
    ApiKey,
    BatchingConfig,
    ClientConfig,
    ConfigError,
    Defaults,
    FooocusConfig,
    KeyQuota,
    Limits,
    MetricsConfig,
    ModelConfig,
    NatsConfig,
    NotifierConfig,
    ProgressConfig,
    ProjectorConfig,
    Quota,
    QuotasConfig,
    RetentionConfig,
    SdWorkManagerConfig,
    StorageConfig,
    UpscalerConfig,
    UpscalerModel,
    WorkerConfig,
)

__all__ = [
    "DEMO_MODEL", "ENV_PREFIX", "ApiConfig", "ApiKey", "BatchingConfig", "ClientConfig", "Config", "ConfigError",
    "Defaults", "FooocusConfig", "KeyQuota", "Limits", "MetricsConfig", "ModelConfig", "NatsConfig",
    "NotifierConfig", "ProgressConfig", "ProjectorConfig", "Quota", "QuotasConfig", "RetentionConfig",
    "SdWorkManagerConfig", "StorageConfig", "UpscalerConfig", "UpscalerModel", "WorkerConfig", "env_overrides",
    "load",
]
