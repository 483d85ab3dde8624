"""Embedding off the event loop, with a cache bounded in bytes and keyed by a text hash.

Every turn of a conversation re-sends the earlier turns, whose embeddings were computed
on the previous request, so a small cache saves most of a conversation's encoding. It is
keyed by a 16-byte BLAKE2b digest of the text, not the text itself (a 1 MB paste must not
be kept alive as a dictionary key), and bounded by the bytes its entries hold, not by
their count (a count says nothing about memory when rows and texts vary in size).

Hashing, cache look-ups and encoding all run in one worker-thread hop: the event loop
does no CPU-bound work for a routing decision, however long the text.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from coe_router import tracing
from coe_router.routing.encoder import Array, Encoder

#: Default budget of one router's cache: ~10,000 rows of 384 float32s.
DEFAULT_CACHE_BYTES = 16 * 1024 * 1024

#: Bytes counted per entry besides the row's data: the digest, the ndarray header and the
#: dictionary slot (an estimate; it keeps tiny rows from making the bound meaningless).
ENTRY_OVERHEAD = 256


def text_key(text: str) -> bytes:
    """The cache key of ``text``: its 16-byte BLAKE2b digest."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    """Least-recently-used embeddings, at most ``max_bytes`` in all. Not thread-safe by
    itself: :class:`AsyncEmbedder` holds a lock around it."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self.max_bytes = max_bytes
        self._rows: OrderedDict[bytes, Array] = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds now (rows plus :data:`ENTRY_OVERHEAD` each)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> Array | None:
        """The row under ``key`` (now the most recently used), or None."""
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: bytes, row: Array) -> None:
        """Store a copy of ``row``, evicting the least recently used rows over budget."""
        # A copy: a row of a batch result is a view that would keep the whole batch alive.
        own = np.array(row, dtype=np.float32, copy=True)
        cost = own.nbytes + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        old = self._rows.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes + ENTRY_OVERHEAD
        self._rows[key] = own
        self._bytes += cost
        while self._bytes > self.max_bytes:
            _, evicted = self._rows.popitem(last=False)
            self._bytes -= evicted.nbytes + ENTRY_OVERHEAD


#: Worker pools by name, and their threads. ``encoder``: every router's embedding, two
#: threads, enough to overlap with the loop on a small CPU without oversubscribing torch's
#: own threads. ``second-reader``: the cascade's transformer, one thread of its own, so a
#: burst of slow second readings (tens of ms each) queues behind itself and never delays
#: the fast routers' decisions.
POOLS = {"encoder": 2, "second-reader": 1}

_executors: dict[str, ThreadPoolExecutor] = {}
_executor_lock = threading.Lock()


def encoder_executor(pool: str = "encoder") -> ThreadPoolExecutor:
    """The worker threads of ``pool`` (one of :data:`POOLS`), created on first use."""
    with _executor_lock:
        if pool not in _executors:
            _executors[pool] = ThreadPoolExecutor(POOLS[pool], thread_name_prefix=f"coe-{pool}")
        return _executors[pool]


def shutdown_encoder_executor() -> None:
    """Stop every pool's threads (the app lifespan calls this on shutdown); the next
    routing decision starts new ones."""
    with _executor_lock:
        executors = list(_executors.values())
        _executors.clear()
    for executor in executors:
        executor.shutdown(wait=True, cancel_futures=True)


class AsyncEmbedder:
    """Runs an encoder in the threads of :func:`encoder_executor`'s ``pool``, through an
    :class:`EmbeddingCache` of ``cache_bytes``."""

    def __init__(
        self, encoder: Encoder, cache_bytes: int = DEFAULT_CACHE_BYTES, pool: str = "encoder"
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"unknown worker pool {pool!r}; one of {sorted(POOLS)}")
        self.encoder = encoder
        self.pool = pool
        self.cache = EmbeddingCache(cache_bytes)
        self._lock = threading.Lock()

    async def embed(self, texts: Sequence[str]) -> Array:
        """Embeddings of ``texts`` (cached ones reused), computed in a worker thread."""
        loop = asyncio.get_running_loop()
        with tracing.encoder_span(len(texts), 0) as span:
            t0 = time.perf_counter()
            rows, computed = await loop.run_in_executor(
                encoder_executor(self.pool), self._embed, list(texts)
            )
            span.set("coe.encoder.computed", computed)
            span.set("coe.encoder_ms", (time.perf_counter() - t0) * 1000)
        return rows

    def embed_sync(self, texts: Sequence[str]) -> Array:
        """The same, in the calling thread (for workers and benchmarks, not the loop)."""
        return self._embed(texts)[0]

    def _embed(self, texts: Sequence[str]) -> tuple[Array, int]:
        """The embeddings, and how many texts had to be encoded (not cached)."""
        keys = [text_key(t) for t in texts]
        found: dict[bytes, Array] = {}
        missing: dict[bytes, str] = {}
        with self._lock:
            for key, text in zip(keys, texts, strict=True):
                row = self.cache.get(key)
                if row is not None:
                    found[key] = row
                elif key not in found:
                    missing[key] = text
        if missing:
            rows = self.encoder.encode(list(missing.values()))
            with self._lock:
                for key, row in zip(missing, rows, strict=True):
                    found[key] = row
                    self.cache.put(key, row)
        if not keys:
            return np.zeros((0, self.encoder.dim), dtype=np.float32), 0
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False), len(missing)
