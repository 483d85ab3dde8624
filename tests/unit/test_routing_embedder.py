"""The embedding cache: keyed by a digest of the text, bounded in bytes, off the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from coe_router.routing.embedder import (
    ENTRY_OVERHEAD,
    AsyncEmbedder,
    EmbeddingCache,
    shutdown_encoder_executor,
    text_key,
)
from coe_router.routing.encoder import Array
from tests.unit.test_routing_support import FakeEncoder

pytestmark = pytest.mark.unit


def test_key_is_a_fixed_size_digest_of_the_text() -> None:
    long = "x" * 1_000_000
    assert len(text_key(long)) == 16
    assert text_key(long) == text_key("x" * 1_000_000)
    assert text_key(long) != text_key(long + "y")
    assert len(text_key("\ud800 lone surrogate")) == 16  # no UnicodeEncodeError


def test_cache_stays_within_its_byte_budget_and_evicts_least_recent() -> None:
    row_cost = 64 * 4 + ENTRY_OVERHEAD
    cache = EmbeddingCache(max_bytes=10 * row_cost)
    rows = np.random.default_rng(0).standard_normal((30, 64)).astype(np.float32)
    for i, row in enumerate(rows):
        cache.put(text_key(str(i)), row)
        if i == 5:
            assert cache.get(text_key("0")) is not None  # 0 becomes the most recent
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 10
    assert cache.nbytes == 10 * row_cost
    assert cache.get(text_key("29")) is not None
    assert cache.get(text_key("1")) is None
    got = cache.get(text_key("25"))
    assert got is not None
    assert np.array_equal(got, rows[25])


def test_cache_does_not_keep_a_batch_alive_through_a_row_view() -> None:
    cache = EmbeddingCache(max_bytes=1 << 20)
    batch = np.ones((1000, 64), dtype=np.float32)
    cache.put(b"k" * 16, batch[3])
    stored = cache.get(b"k" * 16)
    assert stored is not None
    assert stored.base is None  # its own memory, not a view on the 256 KB batch
    assert cache.nbytes == 64 * 4 + ENTRY_OVERHEAD


def test_a_row_larger_than_the_budget_is_not_cached() -> None:
    cache = EmbeddingCache(max_bytes=100)
    cache.put(b"a" * 16, np.ones(64, dtype=np.float32))
    assert len(cache) == 0
    assert cache.nbytes == 0


async def test_embedder_encodes_only_in_worker_threads_even_with_no_cache_room() -> None:
    enc = FakeEncoder()
    embedder = AsyncEmbedder(enc, cache_bytes=0)  # nothing fits: every row is recomputed
    texts = ["python bug", "a poem", "python bug"]
    out = await embedder.embed(texts)
    assert out.shape == (3, enc.dim)
    assert np.array_equal(out, enc.encode(texts))
    enc.threads.pop()  # the direct call above
    assert enc.threads
    assert all(t.startswith("coe-encoder") for t in enc.threads)
    assert threading.main_thread().name not in enc.threads


async def test_repeated_texts_are_served_from_the_cache_across_calls() -> None:
    enc = FakeEncoder()
    embedder = AsyncEmbedder(enc)
    await embedder.embed(["turn one", "turn two"])
    calls = enc.calls
    again = await embedder.embed(["turn two", "turn one"])
    assert enc.calls == calls
    assert np.array_equal(again, enc.encode(["turn two", "turn one"]))


async def test_executor_can_be_shut_down_and_restarted() -> None:
    embedder = AsyncEmbedder(FakeEncoder())
    await embedder.embed(["a"])
    shutdown_encoder_executor()
    out = await asyncio.gather(*(embedder.embed([f"b {i}"]) for i in range(5)))
    assert all(o.shape == (1, embedder.encoder.dim) for o in out)
    shutdown_encoder_executor()


class _Gated(FakeEncoder):
    """Encodes only once ``gate`` is set."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def encode(self, texts: Sequence[str]) -> Array:
        self.gate.wait(10)
        return super().encode(texts)


async def test_a_busy_second_reader_pool_does_not_hold_up_the_encoders() -> None:
    gate = threading.Event()
    slow = AsyncEmbedder(_Gated(gate), pool="second-reader")
    fast = AsyncEmbedder(FakeEncoder())
    # More slow readings than the whole encoder pool has threads.
    pending = [asyncio.ensure_future(slow.embed([f"slow {i}"])) for i in range(4)]
    try:
        out = await asyncio.wait_for(fast.embed(["quick"]), timeout=5)
        assert out.shape == (1, fast.encoder.dim)
        assert not any(p.done() for p in pending)
    finally:
        gate.set()
        await asyncio.gather(*pending)
        shutdown_encoder_executor()


def test_an_unknown_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown worker pool"):
        AsyncEmbedder(FakeEncoder(), pool="gpu")
