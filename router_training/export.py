"""``export-data``: a public source, the frozen real-prompt set or the profiling set as
labelled JSONL (what ``fit``, ``evaluate`` and ``profile`` read)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coe_router.errors import ConfigError
from router_training.data import write_jsonl
from router_training.sources import DEFAULT_CACHE


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of the ``export-data`` command."""
    p.add_argument(
        "source",
        help="all, profiling, sharegpt-hand, sharegpt-heldout (the frozen real-prompt set), "
        "sharegpt-read (read-labelled training turns), or a source name",
    )
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--per-source", type=int, default=20, help="profiling: rows per source")
    p.add_argument("--per-category", type=int, default=15, help="profiling: MMLU rows per category")


def cmd_export_data(a: argparse.Namespace) -> int:
    """``export-data``: one source (or all) as labelled JSONL."""
    from router_training.profiling_set import profiling_examples
    from router_training.sources import SOURCES, sharegpt_hand_labelled

    if a.source == "sharegpt-hand":
        rows = sharegpt_hand_labelled(a.cache)
    elif a.source in ("sharegpt-heldout", "sharegpt-read"):
        from router_training.realprompts import labelled

        rows = labelled(a.cache, "heldout" if a.source == "sharegpt-heldout" else "train")
    elif a.source == "profiling":
        rows = profiling_examples(a.cache, a.per_source, per_category=a.per_category)
    elif a.source == "all" or a.source in SOURCES:
        from router_training.realprompts import drop_frozen

        loaders = SOURCES.values() if a.source == "all" else [SOURCES[a.source]]
        # Training data: never a frozen held-out request, whatever source repeats it.
        rows, dropped = drop_frozen([e for load in loaders for e in load(a.cache)], a.cache)
        if dropped:
            print(f"left out {dropped} rows repeating a frozen held-out turn", file=sys.stderr)
    else:
        raise ConfigError(
            f"unknown source {a.source!r} "
            "(known: all, profiling, sharegpt-hand, sharegpt-heldout, sharegpt-read, "
            f"{', '.join(SOURCES)})"
        )
    print(f"wrote {write_jsonl(a.output, rows)} examples to {a.output}", file=sys.stderr)
    return 0
