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
    COE_REDIS_URL=redis://redis:6379/0
    COE_RATE_LIMITS__REQUESTS_PER_MIN=600
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from coe_router.protocol import AggregationStrategy


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "coe-router"


class ServerSettings(BaseModel):
    """Where the gateway listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: Request bodies above this many bytes get a 413 before they are parsed.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    log_level: str = "info"
    #: Most choices (``n``) one chat request may ask for; more is a 400.
    max_n: int = Field(default=16, ge=1)
    #: Requests on ``/v1/*`` served at once; more get a 503 with ``retry-after``.
    #: Probes (``/health``, ``/ready``, ``/metrics``) are never refused.
    max_concurrency: int = Field(default=1024, ge=1)
    #: A client must send a request's headers within this many seconds of starting it
    #: (or of connecting); slower connections are answered 408 and closed.
    header_timeout_s: float = Field(default=10.0, gt=0)
    #: A request's whole body must arrive within this many seconds of its headers (408).
    body_timeout_s: float = Field(default=30.0, gt=0)
    #: On SIGTERM: in-flight requests and streams get this long to finish; then streams end
    #: in-band (an error event, then ``[DONE]``) and other requests get a 503.
    drain_s: float = Field(default=30.0, ge=0)
    #: Serve ``/docs`` and ``/openapi.json`` (off: they describe the deployment to anyone).
    docs: bool = False
    #: Proxies (CIDRs, e.g. ``["10.0.0.0/8"]``) whose ``X-Forwarded-For`` / ``Forwarded``
    #: headers name the client; from anyone else those headers are ignored. The client
    #: address is the rate-limit identity when no API keys are configured.
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)


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
    #: Largest single SSE event of an expert's stream; a longer one ends the stream with an
    #: in-band 502 and closes the connection (an event is buffered until it is whole).
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: Largest body of a non-streamed answer (decoded); a larger one is a 502.
    max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: Cross-expert fallback: how many other experts a routed request may move to when its
    #: expert has no live replica or fails before the first byte reached the client (0: off).
    #: A virtual model's ``fallback_hops`` in the catalog overrides it.
    fallback_hops: int = Field(default=1, ge=0)


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
    #: Seconds the next experts wait for the generalist's start (preparing included)
    #: before they start anyway: a start that hangs must not hold the others back forever.
    wave_timeout_s: float = Field(default=900.0, gt=0)
    #: Prepare and start the generalist before the other launched experts, which follow once
    #: it is up: it answers every routed request while they load (a sooner first answer,
    #: every expert up later).
    generalist_first: bool = True
    #: Prepare a missing checkpoint of a model ``coe-router models prepare`` knows (a name
    #: under ``models_dir``) before launching it, so a fresh ``serve`` needs no separate step.
    prepare: bool = True


class TierSettings(BaseModel):
    """The tiered pool: which experts are awake, within a memory budget per device.

    Off by default: every expert stays as it is. On, experts that can change tier
    (vLLM with sleep mode, or a launched local process) are woken on demand.
    """

    enabled: bool = False
    #: Device -> GB available to awake experts (``tier.device`` in the catalog).
    budgets_gb: dict[str, float] = Field(default_factory=lambda: {"gpu0": 80.0})
    #: Eviction policy: ``score`` (recency * frequency * wake cost), ``lru``, ``lfu``, ``fifo``.
    policy: Literal["score", "lru", "lfu", "fifo"] = "score"
    #: ``grouped`` serves waiting requests by expert (fewer switches); ``fifo`` in arrival order.
    scheduler: Literal["grouped", "fifo"] = "grouped"
    #: A request waiting this long for its expert jumps the queue (starvation bound).
    max_wait_s: float = Field(default=10.0, gt=0)
    #: Longest a request waits for its expert before a 504.
    queue_timeout_s: float = Field(default=600.0, gt=0)
    #: A wake that takes longer fails (503) and the expert is marked unhealthy.
    wake_timeout_s: float = Field(default=300.0, gt=0)
    #: How long an expert whose wake failed is not tried again.
    failure_backoff_s: float = Field(default=30.0, ge=0)
    #: Routing trades quality for wake time: score - weight * expected wake seconds.
    #: 0 routes on quality only.
    wake_cost_weight: float = Field(default=0.0, ge=0)
    #: Wake the experts that fit (pinned first, then catalog order) at start-up.
    prewarm: bool = True
    #: Recency time constant of the ``score`` policy.
    recency_tau_s: float = Field(default=30.0, gt=0)
    #: Several gateways (Redis): how often each refreshes its view of the shared tier table.
    sync_interval_s: float = Field(default=1.0, gt=0)
    #: Several gateways: TTL of a device's tier lease (renewed while a change runs).
    lease_ttl_s: float = Field(default=15.0, gt=0)


class SynthesisSettings(BaseModel):
    """Multi-expert synthesis: limits and defaults for ``coe.synthesis`` requests."""

    #: Most experts one request may ask (``coe.k``).
    max_k: int = Field(default=5, ge=1)
    default_k: int = Field(default=3, ge=1)
    default_strategy: AggregationStrategy = "synthesize"
    #: Each panel member's own deadline; a slow one is left out.
    expert_timeout_s: float = Field(default=120.0, gt=0)
    #: Seconds between SSE comment lines while the panel works (keeps proxies from timing out).
    keepalive_s: float = Field(default=5.0, gt=0)


class StateSettings(BaseModel):
    """The shared state store (``coe_router/state``): in-process, or Redis when
    ``COE_REDIS_URL`` is set. Redis calls carry explicit timeouts: a slow or absent Redis
    costs a request at most ``socket_timeout_s`` once, then nothing for ``retry_interval_s``.
    """

    #: Prefix of every Redis key, so several deployments can share one Redis.
    prefix: str = "coe:"
    #: Longest wait for one Redis reply; past it the operation counts as failed.
    socket_timeout_s: float = Field(default=0.25, gt=0)
    connect_timeout_s: float = Field(default=0.25, gt=0)
    #: Connections to Redis per gateway; a request waits at most ``socket_timeout_s`` for one.
    max_connections: int = Field(default=64, ge=1)
    #: After a failure, state operations are skipped (fail fast) this long, then retried.
    retry_interval_s: float = Field(default=1.0, ge=0)
    #: At most one "state store failing" log line per operation per this many seconds.
    log_interval_s: float = Field(default=30.0, gt=0)
    #: Fire-and-forget writes (decision log, affinity, cache fills, token counts) waiting;
    #: more are dropped and counted, so a slow Redis never holds requests or memory.
    background_queue: int = Field(default=1024, ge=1)
    background_workers: int = Field(default=8, ge=1)
    #: Keys the in-process store keeps (cache + affinity); the oldest go first.
    memory_max_keys: int = Field(default=100_000, ge=1)


class AffinitySettings(BaseModel):
    """Session affinity: a conversation stays on the expert that answered it first."""

    enabled: bool = True
    #: A conversation nobody continued for this long is forgotten.
    ttl_s: float = Field(default=1800.0, gt=0)
    #: A new routing decision at least this confident moves the conversation to its expert.
    move_confidence: float = Field(default=0.8, ge=0, le=1)


class KeyLimits(BaseModel):
    """Limits of one API key; ``None`` is unlimited."""

    requests_per_min: int | None = Field(default=None, ge=1)
    tokens_per_min: int | None = Field(default=None, ge=1)


class RateLimitSettings(BaseModel):
    """Per-API-key sliding-window limits (one minute), shared by every gateway on one store."""

    #: Every key's limits unless overridden; both unset turns rate limiting off.
    requests_per_min: int | None = Field(default=None, ge=1)
    tokens_per_min: int | None = Field(default=None, ge=1)
    #: Key id (first 12 hex digits of sha256(key)) -> its own limits.
    overrides: dict[str, KeyLimits] = Field(default_factory=dict)
    #: When the store fails: ``open`` serves the request, ``closed`` answers 503.
    on_store_error: Literal["open", "closed"] = "open"


class CacheSettings(BaseModel):
    """The exact-match response cache (on per virtual model: ``cache_ttl_s`` in the catalog)."""

    #: Answers larger than this are not cached.
    max_entry_bytes: int = Field(default=1024 * 1024, ge=1)
    #: Share entries across API keys; off keeps each key's cache to itself.
    shared_across_keys: bool = False


class DecisionLogSettings(BaseModel):
    """The capped routing-decision log (``python -m router_training replay`` reads it).

    Off by default: it stores the users' prompts.
    """

    enabled: bool = False
    #: Entries kept (approximately: Redis trims by whole nodes, ``MAXLEN ~``).
    max_entries: int = Field(default=100_000, ge=1)
    #: Prompts are cut to this many characters.
    max_prompt_chars: int = Field(default=4000, ge=1)
    #: An entry's UTF-8 size at most (its prompt is cut further to fit): with Redis'
    #: ``maxmemory``, ``max_entries * max_entry_bytes`` is what the log may take.
    max_entry_bytes: int = Field(default=16 * 1024, ge=1024)


class Settings(BaseSettings):
    """All of coe-router's settings."""

    model_config = SettingsConfigDict(env_prefix="COE_", env_nested_delimiter="__", extra="ignore")

    #: The expert catalog (YAML): experts, virtual models, keyword rules.
    catalog: Path = Path("deploy/local.yaml")
    server: ServerSettings = Field(default_factory=ServerSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    tiers: TierSettings = Field(default_factory=TierSettings)
    #: Redis for state shared by a fleet of gateways; unset keeps state in-process.
    redis_url: SecretStr | None = None
    state: StateSettings = Field(default_factory=StateSettings)
    affinity: AffinitySettings = Field(default_factory=AffinitySettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    decision_log: DecisionLogSettings = Field(default_factory=DecisionLogSettings)
    synthesis: SynthesisSettings = Field(default_factory=SynthesisSettings)
