"""Choosing build-default's read-label weight and regularization, never on the frozen set.

``python -m router_training tune`` cross-validates the read-labelled TRAINING turns
(source ``sharegpt-read``) in 5 folds by conversation (ShareGPT splits one conversation
into ids ``<conversation>_<n>``: parts of one conversation never sit on both sides).
Every other source stays in training; each fold is fitted as build-default fits (the
teacher filter at that C, read turns weighted, the traffic prior added to the
intercepts, scaled by the prior strength) and scored on the held-out fold's read labels.
The frozen held-out set is never loaded. The grid's best point (:func:`best_setting`:
accuracy first, macro recall among near ties) is what
:data:`~router_training.default.READ_WEIGHTS`, :data:`~router_training.default.PRIOR_STRENGTH`
and :func:`~router_training.default.default_c` hold. At that point, the prior strength most
accurate on the read turns not in English (:func:`other_language_strength`) is
:data:`~router_training.default.OTHER_LANGUAGE_STRENGTH`.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from coe_router.routing.encoder import STATIC_ENCODER
from coe_router.routing.lexical import PieceEncoder
from router_training.data import Example
from router_training.fit import traffic_prior, train_classifier
from router_training.realprompts import READ_SOURCE
from router_training.taxonomy import CATEGORIES


def conversation_folds(rows: Sequence[Example], k: int, source: str = READ_SOURCE) -> NDArray[Any]:
    """Fold of each row of ``source`` (by its conversation, stable across runs); -1 for
    rows of other sources, which are always trained on."""
    folds = np.full(len(rows), -1, dtype=np.int64)
    for i, e in enumerate(rows):
        if e.source == source:
            conversation = str(e.extra["id"]).rsplit("_", 1)[0]
            folds[i] = int(hashlib.sha1(conversation.encode()).hexdigest()[:8], 16) % k
    return folds


class Scores(NamedTuple):
    """One grid point's cross-validated scores."""

    #: Accuracy on each held-out fold of the read turns.
    folds: list[float]
    #: The mean of the categories' recalls over all folds.
    macro: float
    #: Accuracy on the read turns not in English (None when none are flagged).
    other: float | None = None


#: Mean accuracies closer than this are fold noise (the folds spread by about 0.01), so
#: among the grid points this near the most accurate, macro recall decides.
NEAR_TIE = 0.005


def cross_validate(
    rows: Sequence[Example],
    x: Any,
    c: float,
    weight: float,
    k: int = 5,
    strengths: Sequence[float] = (1.0,),
    other: NDArray[np.bool_] | None = None,
) -> dict[float, Scores]:
    """For each traffic-prior strength: accuracy on each held-out fold of the read turns
    (see the module doc), the macro recall over all folds (the mean of the categories'
    recalls: rare categories count as much as code) and, given ``other`` (the rows not in
    English), the accuracy on those read turns. ``x`` is the design: embeddings, with the
    lexical columns when the build has them. The strength only shifts the intercepts, so
    one fit per fold serves them all."""
    index = {cat: i for i, cat in enumerate(CATEGORIES)}
    y = np.array([index[e.category] for e in rows], dtype=np.int64)
    folds = conversation_folds(rows, k)
    read = folds >= 0
    out: dict[float, list[float]] = {s: [] for s in strengths}
    predictions = {s: np.full(len(rows), -1, dtype=np.int64) for s in strengths}
    for f in range(k):
        test = folds == f
        train = ~test
        weights = np.where(read, weight, 1.0)[train]
        coef, intercept = train_classifier(x[train], y[train], len(CATEGORIES), c, 0, weights)
        prior = traffic_prior([rows[i] for i in np.flatnonzero(train)], CATEGORIES, READ_SOURCE)
        assert prior is not None
        logits = np.asarray(x[test] @ coef.T) + intercept
        for s in strengths:
            predicted = (logits + s * np.log(prior)).argmax(1)
            out[s].append(float((predicted == y[test]).mean()))
            predictions[s][test] = predicted
    present = set(y[read].tolist())
    foreign = read & other if other is not None else np.zeros(len(rows), dtype=bool)
    return {
        s: Scores(
            out[s],
            float(np.mean([(predictions[s][read & (y == i)] == i).mean() for i in present])),
            float((predictions[s][foreign] == y[foreign]).mean()) if foreign.any() else None,
        )
        for s in strengths
    }


def best_setting(results: dict[tuple[float, ...], Scores]) -> tuple[float, ...]:
    """The grid point to build with: the best macro recall among those within
    :data:`NEAR_TIE` of the best mean accuracy. Accuracy is the goal; macro recall keeps
    a textbook derivative from going to writing when accuracy cannot tell two apart."""
    best = max(float(np.mean(r.folds)) for r in results.values())
    near = [k for k, r in results.items() if float(np.mean(r.folds)) >= best - NEAR_TIE]
    return max(near, key=lambda k: (results[k].macro, float(np.mean(results[k].folds))))


def other_language_strength(by_strength: dict[float, Scores], chosen: float) -> float | None:
    """The prior strength for prompts not in English: the most accurate on the non-English
    read turns, the one nearest ``chosen`` (the strength for English) among ties; None
    when there are no such turns. Their evidence is weaker (an English encoder), so this
    is a separate knob; it moves too few turns to count in :func:`best_setting`."""
    scored = {s: r.other for s, r in by_strength.items() if r.other is not None}
    if not scored:
        return None
    top = max(scored.values())
    return min((s for s, a in scored.items() if a == top), key=lambda s: abs(s - chosen))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of the ``tune`` command."""
    p.add_argument("--cache", type=Path, default=Path(".cache/router_data"))
    p.add_argument("--encoder", default=STATIC_ENCODER)
    # The defaults are the grid that chose what build-default ships (docs/routing.md).
    p.add_argument("--C", default="2,4,8", help="comma-separated values of C")
    p.add_argument("--weights", default="12,24", help="comma-separated read-label weights")
    p.add_argument(
        "--prior", default="0,0.25,0.5,1,2", help="comma-separated traffic-prior strengths"
    )


def cmd_tune(a: argparse.Namespace) -> int:
    """``tune``: every grid point's cross-validated accuracy and macro recall, then the
    point :func:`best_setting` chooses."""
    from coe_router.routing.language import not_english
    from router_training.default import load_all, teacher_filter
    from router_training.embed import cache_dir, cache_key, embed_all, load_encoder
    from router_training.fit import read_texts, with_lexical
    from router_training.lexical import fit_lexical, pieces_of

    rows, _ = load_all(a.cache, log=lambda *_: None)
    encoder, info = load_encoder(a.encoder, "head_tail")
    # As build-default: prompts not in English glossed, with the lexical block. Tokenized
    # once; each C keeps other rows.
    texts = read_texts(rows, gloss=True)
    x = embed_all(encoder, texts, cache=cache_dir(a.cache, cache_key(info), "head_tail"))
    words = None
    if isinstance(encoder, PieceEncoder):
        words = (pieces_of(encoder, texts), encoder.vocab_size)
    strengths = [float(v) for v in a.prior.split(",")]
    foreign = np.array([not_english(e.prompt) for e in rows], dtype=bool)
    results: dict[tuple[float, ...], Scores] = {}
    for c in (float(v) for v in a.C.split(",")):
        keep, _ = teacher_filter(rows, x, c)
        kept, xk = [rows[i] for i in keep], x[keep]
        if words is not None:
            # The vocabulary uses no labels, so fitting it on every fold's texts leaks none.
            pieces, vocab_size = words
            xk = with_lexical(xk, fit_lexical([pieces[i] for i in keep], vocab_size).matrix)
        for w in (float(v) for v in a.weights.split(",")):
            got = cross_validate(kept, xk, c, w, strengths=strengths, other=foreign[keep])
            for s, r in got.items():
                results[(c, w, s)] = r
                line = f"C {c:<5g} weight {w:<4g} prior {s:<5g} accuracy {np.mean(r.folds):.4f}"
                other = "-" if r.other is None else f"{r.other:.4f}"
                print(
                    f"{line} macro recall {r.macro:.4f} not English {other}  "
                    f"folds {np.round(r.folds, 3)}",
                    flush=True,
                )
    c, w, s = best_setting(results)
    best = results[(c, w, s)]
    print(
        f"best (macro recall within {NEAR_TIE} of the best accuracy): C {c:g}, weight {w:g}, "
        f"prior {s:g} ({np.mean(best.folds):.4f}, {best.macro:.4f})"
    )
    at_best = {k[2]: r for k, r in results.items() if k[:2] == (c, w)}
    strength = other_language_strength(at_best, s)
    if strength is not None:
        n = sum(bool(f) and e.source == READ_SOURCE for f, e in zip(foreign, rows, strict=True))
        print(
            f"prior for prompts not in English ({n} read turns; most accurate there, at C "
            f"{c:g}, weight {w:g}): {strength:g} ({at_best[strength].other or 0.0:.4f})"
        )
    return 0
