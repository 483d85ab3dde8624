"""Every Prometheus metric coe-router exports, defined once.

Metrics live in a :class:`Metrics` object with its own registry (one per app), so
several apps in one process (tests, benchmarks) never collide on the global one.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

#: Latency buckets from sub-millisecond routing up to minute-long generations.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


#: Tier transitions: a fraction of a second (level-1 wake) to minutes (process start).
_TRANSITION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The gateway's metrics and the registry that exports them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "coe_requests",
            "Chat completion requests by outcome.",
            ["model", "expert", "strategy", "status"],
            registry=r,
        )
        self.routing_latency = Histogram(
            "coe_routing_latency_seconds",
            "Time the router took to decide.",
            ["strategy"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "coe_time_to_first_token_seconds",
            "From request arrival to the first streamed chunk sent to the client.",
            ["expert"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "coe_request_latency_seconds",
            "From request arrival to the last byte, per expert.",
            ["expert"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "coe_in_flight_requests",
            "Requests being served, per expert.",
            ["expert"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "coe_upstream_errors",
            "Failed calls to expert replicas, by kind.",
            ["expert", "kind"],
            registry=r,
        )
        self.fallbacks = Counter(
            "coe_fallbacks",
            "Routed requests answered by another expert than the routed one (cross-expert "
            "fallback), by reason.",
            ["source", "target", "reason"],
            registry=r,
        )
        self.replica_up = Gauge(
            "coe_replica_up",
            "1 when the replica passes health checks, else 0 (replica: its index in the catalog).",
            ["expert", "replica"],
            registry=r,
        )

        # --- the tiered pool ---
        self.tier = Gauge(
            "coe_expert_tier",
            "1 for the tier each expert is in now (hot, warm, cold).",
            ["expert", "tier"],
            registry=r,
        )
        self.wake_seconds = Histogram(
            "coe_tier_wake_seconds",
            "Time to wake an expert, by the tier it woke from.",
            ["expert", "from_tier"],
            buckets=_TRANSITION_BUCKETS,
            registry=r,
        )
        self.sleep_seconds = Histogram(
            "coe_tier_sleep_seconds",
            "Time to put an expert to sleep, by sleep level.",
            ["expert", "level"],
            buckets=_TRANSITION_BUCKETS,
            registry=r,
        )
        self.switches = Counter(
            "coe_tier_switches",
            "Wakes that brought an expert onto the accelerator.",
            ["expert"],
            registry=r,
        )
        self.wake_failures = Counter(
            "coe_tier_wake_failures",
            "Wakes that failed or timed out.",
            ["expert"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "coe_tier_queue_wait_seconds",
            "Time a request waited for its expert to be awake.",
            ["expert"],
            buckets=_TRANSITION_BUCKETS,
            registry=r,
        )
        self.budget_used = Gauge(
            "coe_gpu_budget_used_gb",
            "Accelerator memory held by awake (or waking) experts.",
            ["device"],
            registry=r,
        )
        self.budget_total = Gauge(
            "coe_gpu_budget_gb",
            "Accelerator memory budget per device.",
            ["device"],
            registry=r,
        )

        # --- shared state (coe_router/state) ---
        self.state_errors = Counter(
            "coe_state_errors",
            "State store operations that failed, timed out or were skipped after a failure "
            "(the request was served without them), by operation.",
            ["op"],
            registry=r,
        )
        self.rate_limited = Counter(
            "coe_rate_limited",
            "Requests refused with 429, by limit (requests or tokens).",
            ["limit"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "coe_cache_lookups",
            "Response cache lookups, by virtual model and result (hit, miss).",
            ["model", "result"],
            registry=r,
        )
        self.affinity = Counter(
            "coe_affinity",
            "Routed requests by affinity outcome (sticky, moved, new).",
            ["model", "outcome"],
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format for ``GET /metrics``."""
        return generate_latest(self.registry)
