"""The routing latency benchmark measures the shapes it claims, through ``route()``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.routing_latency import build, conversation, long_prompt, measure, pct, table
from coe_router.catalog import load_catalog

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_shapes_are_what_the_table_says() -> None:
    assert len(long_prompt(3)[0].content) == 10_000
    conv = conversation(3)
    assert sum(m.role == "user" for m in conv) == 20
    assert conv[-1].role == "user"
    # Cold calls: every call's text differs, so the cache cannot answer.
    assert long_prompt(1)[0].content != long_prompt(2)[0].content
    assert conversation(1)[0].content != conversation(2)[0].content
    # Cached calls: only the latest turn differs.
    a, b = conversation(1, fresh_history=False), conversation(2, fresh_history=False)
    assert [m.content for m in a[:-1]] == [m.content for m in b[:-1]]
    assert a[-1].content != b[-1].content


def test_percentile_is_nearest_rank_in_ms() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert pct(values, 50) == pytest.approx(51.0)
    assert pct(values, 99) == pytest.approx(99.0)


async def test_a_tiny_run_of_the_static_router_reports_every_figure() -> None:
    catalog = load_catalog(ROOT / "deploy" / "local.yaml")
    router, build_s = build("static", catalog, ROOT / "deploy/routers/default")
    built = []

    def new_router() -> Any:
        built.append(build("static", catalog, ROOT / "deploy/routers/default")[0])
        return built[-1]

    heldout = [
        SimpleNamespace(prompt="Write a haiku about autumn rain.", category="writing"),
        SimpleNamespace(prompt="Fix this Python traceback: KeyError 'id'", category="code"),
        SimpleNamespace(prompt="Solve for x: 3x + 5 = 20", category="math"),
    ]
    row = await measure(router, new_router, n=5, rounds=1, sets={"heldout": heldout})
    for shape in ("short", "long", "conversation", "conversation_cached"):
        assert 0 < row[f"p50_ms_{shape}"] <= row[f"p99_ms_{shape}"]
    assert row["batch64_per_s"] > 0
    assert build_s >= 0
    assert row["n_heldout"] == 3
    assert 0 <= row["accuracy_heldout"] <= 1
    # The real-prompt batch runs on a router of its own: the serial pass's cache is not it.
    assert len(built) == 1
    assert built[0] is not router
    assert row["batch64_per_s_heldout"] > 0
    text = table({"static": row})
    assert text.splitlines()[2].startswith("static")


async def test_without_the_frozen_set_there_is_no_real_batch_rate() -> None:
    catalog = load_catalog(ROOT / "deploy" / "local.yaml")
    router, _ = build("keyword", catalog, Path())

    def never() -> Any:
        raise AssertionError("no frozen set, no second router")

    row = await measure(router, never, n=3, rounds=1, sets={})
    assert "batch64_per_s_heldout" not in row
    assert "nan" in table({"keyword": row}).splitlines()[2]
