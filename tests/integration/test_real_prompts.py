"""The read-labelled real-prompt sets (router_training.realprompts) against the wheel.

The frozen held-out set must stay frozen: its ids are exactly what the documented
selection picks, and no training source can reach them.
"""

from __future__ import annotations

import json
from pathlib import Path

from router_training import realprompts, sources
from router_training.taxonomy import CATEGORIES

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "router_data"


def test_the_shipped_labels_are_the_documented_selection() -> None:
    chosen = realprompts.selection(CACHE)
    shipped = json.loads(realprompts.LABELS.read_text(encoding="utf-8"))
    hand = set(sources.sharegpt_hand_ids())
    assert set(shipped["heldout"]) == set(chosen["heldout"]) - hand
    assert set(shipped["train"]) == set(chosen["train"])
    assert not set(chosen["heldout"]) & set(chosen["train"])
    assert set(shipped["heldout"].values()) | set(shipped["train"].values()) <= {
        *CATEGORIES,
        realprompts.SKIP,
    }


def test_no_training_source_reaches_the_frozen_set() -> None:
    frozen = realprompts.frozen_ids()
    held = realprompts.labelled(CACHE, "heldout")
    held_texts = {sources.norm_text(e.prompt) for e in held}
    # The rule-labelled source, as build-default and export-data call it: ShareGPT
    # repeats first turns under other ids, so texts are compared, not only ids.
    rule_rows = sources.SOURCES["sharegpt"](CACHE)
    assert rule_rows, "the rule-labelled source is empty"
    assert not {e.extra["id"] for e in rule_rows} & frozen
    assert not {sources.norm_text(e.prompt) for e in rule_rows} & held_texts
    # Any other source that repeats a held-out request loses it.
    alpaca, dropped = realprompts.drop_frozen(sources.SOURCES["alpacaeval"](CACHE), CACHE)
    assert dropped >= 1  # AlpacaEval holds two requests that ShareGPT users also sent
    assert not {sources.norm_text(e.prompt) for e in alpaca} & held_texts
    train = realprompts.labelled(CACHE, "train")
    assert not {sources.norm_text(e.prompt) for e in train} & held_texts
    assert len(held) >= 500
    assert len(train) + len(held) >= 2000
    # Skipped turns are left out, and every row knows its language.
    assert all(e.category != realprompts.SKIP and e.extra["lang"] for e in held + train)
    assert sum(e.extra["lang"] != "en" for e in held) >= 100


def test_the_second_reading_is_the_documented_sample_of_the_frozen_set() -> None:
    shipped = json.loads(realprompts.SECOND_READING.read_text(encoding="utf-8"))["labels"]
    ids = realprompts.second_reading_ids(CACHE)
    assert len(ids) == realprompts.SECOND_READING_SIZE
    assert set(shipped) == set(ids)
    assert set(ids) <= realprompts.frozen_ids()
    assert set(shipped.values()) <= {*CATEGORIES, realprompts.SKIP}
    out = realprompts.summary(CACHE)["heldout"]["second_reading_vs_read"]
    assert out["n"] == len(ids)
    assert 0 < out["both_labelled"] <= out["n"]
