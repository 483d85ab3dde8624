"""The routing latency benchmark measures the shapes it claims, through ``route()``."""

from __future__ import annotations

from pathlib import Path

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
    router, build_s = build(
        "static", load_catalog(ROOT / "deploy" / "local.yaml"), ROOT / "deploy/routers/default"
    )
    row = await measure("static", router, n=5, rounds=1, sets={})
    for shape in ("short", "long", "conversation", "conversation_cached"):
        assert 0 < row[f"p50_ms_{shape}"] <= row[f"p99_ms_{shape}"]
    assert row["batch64_per_s"] > 0
    assert build_s >= 0
    text = table({"static": row})
    assert text.splitlines()[2].startswith("static")
