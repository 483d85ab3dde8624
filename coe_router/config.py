"""Settings: read from ``COE_``-prefixed environment variables (nested with ``__``) or passed in.

Nothing reads these at import time. ``create_app(settings)`` and the CLI build one
:class:`Settings` and hand it down; no module keeps a global copy.

Examples::

    COE_CATALOG=deploy/local.yaml
    COE_SERVER__PORT=8000
    COE_AUTH__API_KEYS='["sk-team-a", "sk-team-b"]'
    COE_AUTH__ADMIN_KEY=sk-admin
    COE_UPSTREAM__READ_TIMEOUT_S=120
    COE_LOCAL__MODELS_DIR=.models
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "coe-router"


class ServerSettings(BaseModel):
    """Where the gateway listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: Request bodies above this many bytes get a 413 before they are parsed.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    log_level: str = "info"


class UpstreamSettings(BaseModel):
    """How the gateway talks to expert replicas."""

    connect_timeout_s: float = Field(default=3.0, gt=0)
    #: Longest silence while waiting for a response or between two stream chunks.
    read_timeout_s: float = Field(default=120.0, gt=0)
    write_timeout_s: float = Field(default=30.0, gt=0)
    pool_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    #: Replicas tried per request; another one is tried only before any byte reached the client.
    max_attempts: int = Field(default=3, ge=1)
    health_interval_s: float = Field(default=5.0, gt=0)
    health_timeout_s: float = Field(default=2.0, gt=0)
    #: Consecutive failures that open a replica's circuit breaker.
    breaker_failures: int = Field(default=3, ge=1)
    #: Seconds an open breaker waits before it lets one trial request through.
    breaker_reset_s: float = Field(default=15.0, gt=0)


class AuthSettings(BaseModel):
    """Bearer keys. Empty ``api_keys`` leaves inference open; admin routes need ``admin_key``."""

    api_keys: list[SecretStr] = Field(default_factory=list)
    admin_key: SecretStr | None = None


class LocalSettings(BaseModel):
    """Experts the gateway launches itself as vLLM CPU processes."""

    #: Start the catalog's ``launch`` experts; off when they are run elsewhere.
    launch: bool = True
    models_dir: Path = Field(default_factory=lambda: _cache_dir() / "models")
    #: Logs and pid files of launched experts.
    run_dir: Path = Field(default_factory=lambda: _cache_dir() / "run")
    #: Interpreter that runs ``vllm.entrypoints.openai.api_server``.
    python: str = Field(default_factory=lambda: sys.executable)
    #: Seconds to wait for a process to stop after SIGTERM before SIGKILL.
    stop_timeout_s: float = Field(default=20.0, gt=0)
    #: Seconds between progress lines while experts load.
    progress_interval_s: float = Field(default=10.0, gt=0)


class Settings(BaseSettings):
    """All of coe-router's settings."""

    model_config = SettingsConfigDict(env_prefix="COE_", env_nested_delimiter="__", extra="ignore")

    #: The expert catalog (YAML): experts, virtual models, keyword rules.
    catalog: Path = Path("deploy/local.yaml")
    server: ServerSettings = Field(default_factory=ServerSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
