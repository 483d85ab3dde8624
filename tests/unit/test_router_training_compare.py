"""``compare``: every strategy of the embedded catalog on one set, as the gateway routes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coe_router.catalog import load_catalog
from coe_router.errors import ConfigError
from router_training.cli import main
from router_training.compare import compare
from router_training.data import Example, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "deploy" / "local.yaml"
ROWS = [
    Example("Fix this Python traceback: TypeError in my Flask view", "code"),
    Example("Write a short poem about the sea at night", "writing"),
    Example("What's a good name for a bakery?", "general"),
    Example("Écris une fonction JavaScript qui trie un tableau", "code", extra={"lang": "fr"}),
]


def test_every_strategy_is_scored_on_the_same_examples() -> None:
    rows = compare(load_catalog(CATALOG), ["coe", "coe-keyword", "coe-retriever"], ROWS)
    assert [r["model"] for r in rows] == ["coe", "coe-keyword", "coe-retriever"]
    assert [r["strategy"] for r in rows] == ["category", "keyword", "retriever"]
    for r in rows:
        assert r["n"] == len(ROWS)
        assert sum(r["experts"].values()) == len(ROWS)
        assert r["accuracy_non_en"] in (0.0, 1.0)  # one French example
        assert 0.0 <= r["accuracy"] <= 1.0


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no virtual model"):
        compare(load_catalog(CATALOG), ["nope"], ROWS)


def test_cli_prints_a_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    write_jsonl(data, ROWS)
    code = main(["compare", str(data), "--catalog", str(CATALOG), "--models", "coe,coe-keyword"])
    assert code == 0
    assert main(["compare", str(data), "--catalog", str(CATALOG), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split()[:3] == ["model", "strategy", "accuracy"]
    last = json.loads(out[-1])
    assert [r["model"] for r in last] == [
        "coe",
        "coe-precise",
        "coe-skills",
        "coe-retriever",
        "coe-synth",
        "coe-keyword",
    ]
