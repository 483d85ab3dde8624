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
    rule_rows = sources.sharegpt(CACHE, cap=100_000, exclude=realprompts.labelled_ids())
    assert rule_rows, "the rule-labelled source is empty"
    assert not {e.extra["id"] for e in rule_rows} & frozen
    train = realprompts.labelled(CACHE, "train")
    held = realprompts.labelled(CACHE, "heldout")
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    assert len(held) >= 500
    assert len(train) + len(held) >= 2000
    # Skipped turns are left out, and every row knows its language.
    assert all(e.category != realprompts.SKIP and e.extra["lang"] for e in held + train)
    assert sum(e.extra["lang"] != "en" for e in held) >= 100
