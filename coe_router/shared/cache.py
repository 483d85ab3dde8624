"""The exact-match response cache, opt-in per virtual model (``cache_ttl_s`` in the catalog).

The key is a hash of the normalized request: the body without our ``coe`` extension
and ``user`` (neither changes the answer), with keys sorted, plus the stream flag and,
unless ``COE_CACHE__SHARED_ACROSS_KEYS``, the caller's key id. Streamed answers are
stored as the SSE bytes the client received and replayed as a stream; non-streamed ones
as their JSON. Only complete, successful answers are stored, in the background.

The lookup comes right after rate limiting: a hit skips routing and the expert, and is
answered with the original routing headers plus ``x-coe-cache: hit``. Sampling
parameters are part of the key, but a cached answer to a ``temperature > 0`` request
is the same answer every time: that is what turning the cache on for a model means.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from coe_router.catalog import Catalog
from coe_router.config import CacheSettings
from coe_router.errors import StateUnavailable
from coe_router.metrics import Metrics
from coe_router.state import StoreAccess

#: Request fields that never change the answer.
_IGNORED = frozenset({"coe", "user", "stream"})


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One cache entry: how to replay it, the routing headers it had, its bytes."""

    kind: str  # "json" | "sse"
    headers: dict[str, str]
    body: bytes

    def encode(self) -> bytes:
        """One header line of JSON, then the body as it was sent."""
        meta = json.dumps({"kind": self.kind, "headers": self.headers}, separators=(",", ":"))
        return meta.encode() + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        """The entry in ``raw``, or None if it is not one (then it is ignored)."""
        meta, sep, body = raw.partition(b"\n")
        try:
            obj = json.loads(meta) if sep else None
        except ValueError:
            return None
        if not isinstance(obj, dict) or obj.get("kind") not in ("json", "sse"):
            return None
        headers = obj.get("headers")
        if not isinstance(headers, dict):
            return None
        return cls(str(obj["kind"]), {str(k): str(v) for k, v in headers.items()}, body)


@dataclass(frozen=True, slots=True)
class CachePlan:
    """Where this request's answer lives in the cache, and for how long."""

    key: str
    model: str
    ttl_s: float


class ResponseCache:
    """Lookup before the expert is called; fill after it answered completely."""

    def __init__(
        self,
        catalog: Catalog,
        settings: CacheSettings,
        access: StoreAccess,
        metrics: Metrics,
    ) -> None:
        self._ttl = {v.name: v.cache_ttl_s for v in catalog.virtual_models if v.cache_ttl_s}
        self._settings = settings
        self._access = access
        self._metrics = metrics

    @property
    def max_entry_bytes(self) -> int:
        """Larger answers are not stored."""
        return self._settings.max_entry_bytes

    def plan(self, model: str, body: dict[str, Any], stream: bool, kid: str) -> CachePlan | None:
        """The cache slot of a request, or None when ``model`` does not cache."""
        ttl = self._ttl.get(model)
        if ttl is None:
            return None
        normalized = {k: v for k, v in body.items() if k not in _IGNORED}
        if not stream:
            normalized.pop("stream_options", None)  # ignored without streaming
        scope = "*" if self._settings.shared_across_keys else kid
        canonical = json.dumps(
            [scope, stream, normalized], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        return CachePlan(f"cache:{model}:{digest}", model, ttl)

    async def lookup(self, plan: CachePlan) -> CachedAnswer | None:
        """The stored answer, or None (a miss, or the store is failing)."""
        try:
            raw = await self._access.guard.call(
                "cache_get", lambda: self._access.store.get(plan.key)
            )
        except StateUnavailable:
            return None
        entry = CachedAnswer.decode(raw) if raw is not None else None
        self._metrics.cache_lookups.labels(plan.model, "hit" if entry else "miss").inc()
        return entry

    def fill(self, plan: CachePlan, entry: CachedAnswer) -> None:
        """Store ``entry`` in the background, unless it is too big."""
        if len(entry.body) > self._settings.max_entry_bytes:
            return
        data = entry.encode()
        self._access.background.submit(
            "cache_set", lambda: self._access.store.set(plan.key, data, plan.ttl_s)
        )
