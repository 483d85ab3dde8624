"""The router artifact: the one format training writes and the gateway reads.

An artifact is a directory::

    manifest.json   what the weights mean: encoder, labels, skills, calibration,
                    library versions, data hash, validation metrics
    weights.npz     plain numpy arrays (no pickle), so serving needs numpy and the
                    encoder only, never scikit-learn

Arrays (``D`` = embedding size, ``C`` = categories, ``S`` = skills):

* ``category_coef`` ``(C, D)``, ``category_intercept`` ``(C,)``: multinomial logistic
  regression; probabilities are ``softmax(logits / temperature)``.
* ``category_centroids`` ``(C, D)``: unit-norm mean embedding per category, the
  RouterRetriever pilots when no expert profiles exist.
* ``skill_coef`` ``(S, D)``, ``skill_intercept`` ``(S,)`` (optional): one-vs-rest skill
  detectors, ``sigmoid(logits / skill_temperature)``.

Optionally ``lexical.npz`` (manifest key ``lexical``): tf-idf over the static encoder's
word pieces with its own ``(C, F)`` coefficients (:mod:`coe_router.routing.lexical`).
Its logits are appended to each embedding row by :meth:`RouterArtifact.feature_encoder`
and added to the category logits, so such an artifact classifies ``(D + C)``-wide rows.

Optionally ``category_language_offset`` ``(C,)`` (manifest key ``language``): added to the
category logits of a prompt not in English (:mod:`coe_router.routing.language`); the
flag is the last column of each row, so rows are one wider again.

Expert profiles (``profiles.json``, written by ``router_training profile``) live here
too: they are the other half of the contract between training and serving.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from coe_router.errors import ConfigError
from coe_router.routing.encoder import Encoder
from coe_router.routing.gloss import GLOSS_VERSION
from coe_router.routing.language import JUDGED, WINDOW, LanguageEncoder
from coe_router.routing.lexical import (
    LEXICAL,
    LexicalBlock,
    LexicalEncoder,
    PieceEncoder,
    file_sha256,
)

FORMAT = "coe-router/router-artifact"
VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"

Array = NDArray[np.float32]


@dataclass
class RouterArtifact:
    """A trained router: its manifest and its arrays."""

    manifest: dict[str, Any]
    arrays: dict[str, Array]
    path: Path | None = None
    lexical: LexicalBlock | None = None

    @property
    def labels(self) -> list[str]:
        """The categories, in the order of the classifier's rows."""
        return list(self.manifest["labels"])

    @property
    def skills(self) -> list[str]:
        """The skills, in the order of the skill detectors' rows (may be empty)."""
        return list(self.manifest.get("skills", []))

    @property
    def encoder(self) -> dict[str, Any]:
        """How prompts were embedded: serving must embed the same way."""
        return dict(self.manifest["encoder"])

    @property
    def temperature(self) -> float:
        """Temperature of the category softmax (fitted on the validation split)."""
        return float(self.manifest.get("calibration", {}).get("temperature", 1.0))

    @property
    def skill_temperature(self) -> float:
        """Temperature of the skill sigmoids."""
        return float(self.manifest.get("calibration", {}).get("skill_temperature", 1.0))

    @property
    def fallback_threshold(self) -> float:
        """Recommended confidence below which the generalist answers."""
        return float(self.manifest.get("thresholds", {}).get("fallback", 0.0))

    @property
    def category_bias(self) -> Array:
        """Per-category log-offsets set by ``router_training calibrate`` (traffic shares)."""
        bias = self.manifest.get("thresholds", {}).get("category_bias", {})
        return np.array([float(bias.get(c, 0.0)) for c in self.labels], dtype=np.float32)

    @property
    def dim(self) -> int:
        """Embedding size (the width of ``category_coef``)."""
        return int(self.arrays["category_coef"].shape[1])

    @property
    def language_offset(self) -> Array | None:
        """``(C,)`` logits added for a prompt not in English, or None (see module doc)."""
        return self.arrays.get("category_language_offset")

    def flags_not_english(self, row: Array) -> bool:
        """Whether one row of :meth:`feature_encoder` carries the not-English flag (always
        False for an artifact without a language offset)."""
        return self.language_offset is not None and bool(row[-1] > 0.5)

    @property
    def row_width(self) -> int:
        """Width of the rows :meth:`category_proba` reads: the embedding, the lexical
        block's logits, the not-English flag (each when the artifact has it)."""
        lexical = self.lexical.n_classes if self.lexical is not None else 0
        return self.dim + lexical + (self.language_offset is not None)

    def feature_encoder(self, encoder: Encoder) -> Encoder:
        """What this artifact classifies: ``encoder`` itself; with a lexical block, its rows
        followed by the block's logits (the encoder must hand over its word pieces: the
        static encoder); with a language offset, then the not-English flag."""
        features = encoder
        if self.lexical is not None:
            if not isinstance(encoder, PieceEncoder):
                raise ConfigError(
                    "router artifact has a lexical block, which needs the static encoder's "
                    f"word pieces; {type(encoder).__name__} has none"
                )
            features = LexicalEncoder(encoder, self.lexical)
        if self.language_offset is not None:
            features = LanguageEncoder(features, glossed=self.glossed)
        return features

    @property
    def glossed(self) -> bool:
        """Whether this artifact was fitted on glossed text (:mod:`coe_router.routing.gloss`)
        for prompts not in English, so serving glosses them too."""
        block = self.manifest.get("language")
        return isinstance(block, dict) and "gloss" in block

    def category_proba(self, embeddings: Array, *, biased: bool = True) -> Array:
        """Calibrated category probabilities, one row per embedding (rows of
        :meth:`feature_encoder`); with the calibrated traffic-share offsets unless
        ``biased`` is false."""
        d = self.dim
        if embeddings.shape[1] != self.row_width:
            parts = [f"embedding {d}"]
            if self.lexical is not None:
                parts.append(f"lexical block logits {self.lexical.n_classes}")
            if self.language_offset is not None:
                parts.append("language flag 1")
            raise ConfigError(
                f"router artifact reads rows {self.row_width} wide ({' + '.join(parts)}: see "
                f"feature_encoder), not {embeddings.shape[1]}"
            )
        logits = embeddings[:, :d] @ self.arrays["category_coef"].T
        logits = logits + self.arrays["category_intercept"]
        offset = self.language_offset
        if self.lexical is not None:
            logits = logits + embeddings[:, d : d + self.lexical.n_classes]
        if offset is not None:
            logits = logits + embeddings[:, -1:] * offset
        logits = logits / self.temperature
        if biased:
            logits = logits + self.category_bias
        return softmax(logits)

    def skill_proba(self, embeddings: Array) -> Array:
        """Independent skill probabilities, one row per embedding."""
        if "skill_coef" not in self.arrays:
            raise ConfigError("router artifact has no skill detectors (fit with skills)")
        logits = embeddings[:, : self.dim] @ self.arrays["skill_coef"].T
        logits = logits + self.arrays["skill_intercept"]
        out: Array = (1.0 / (1.0 + np.exp(-logits / self.skill_temperature))).astype(np.float32)
        return out

    def save(self, directory: Path) -> Path:
        """Write ``manifest.json`` and ``weights.npz`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "version": VERSION, **self.manifest, "weights": WEIGHTS}
        if self.lexical is not None:
            sha = self.lexical.save(directory / LEXICAL)
            manifest["lexical"] = {
                **manifest.get("lexical", {}),
                "file": LEXICAL,
                "sha256": sha,
                "features": int(self.lexical.keys.shape[0]),
                "vocab_size": self.lexical.vocab_size,
            }
            self.manifest["lexical"] = manifest["lexical"]
        # float16 on disk: halves the committed size; logits move by ~1e-3, decisions don't.
        arrays: dict[str, Any] = {k: np.asarray(v, np.float16) for k, v in self.arrays.items()}
        np.savez_compressed(directory / WEIGHTS, **arrays)
        (directory / MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        self.path = directory
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> RouterArtifact:
        """Read an artifact directory; every problem is a ConfigError naming the path."""
        directory = Path(directory)
        try:
            manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"router artifact {directory}: no {MANIFEST}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"router artifact {directory}: bad {MANIFEST}: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ConfigError(f"router artifact {directory}: {MANIFEST} is not a {FORMAT}")
        if manifest.get("version") != VERSION:
            raise ConfigError(
                f"router artifact {directory}: version {manifest.get('version')} "
                f"(this gateway reads version {VERSION})"
            )
        try:
            # allow_pickle=False: an artifact is data, never code.
            with np.load(directory / manifest.get("weights", WEIGHTS), allow_pickle=False) as npz:
                arrays = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"router artifact {directory}: unreadable weights: {exc}") from None
        lexical = None
        if isinstance(manifest.get("lexical"), dict):
            block = manifest["lexical"]
            path = directory / str(block.get("file", LEXICAL))
            # Like the encoder's table: a block from another build must not pass silently.
            if "sha256" in block and file_sha256(path) != block["sha256"]:
                raise ConfigError(
                    f"router artifact {directory}: {path.name} does not match the sha256 "
                    "in its manifest (retrain, or restore the file the manifest names)"
                )
            lexical = LexicalBlock.load(
                path, int(block.get("vocab_size", 0)), len(manifest.get("labels", []))
            )
        artifact = cls(manifest=manifest, arrays=arrays, path=directory, lexical=lexical)
        artifact.check()
        return artifact

    def check(self) -> None:
        """Shapes agree with the manifest (a truncated or mixed-up artifact fails here)."""
        where = f"router artifact {self.path or '(in memory)'}"
        for key in ("category_coef", "category_intercept", "category_centroids"):
            if key not in self.arrays:
                raise ConfigError(f"{where}: weights lack {key!r}")
        n, dim = len(self.labels), int(self.manifest["encoder"].get("dim", 0))
        if self.arrays["category_coef"].shape != (n, dim):
            raise ConfigError(
                f"{where}: category_coef has shape {self.arrays['category_coef'].shape}, "
                f"expected ({n}, {dim}) from the manifest"
            )
        offset = self.language_offset
        if offset is not None and offset.shape != (n,):
            raise ConfigError(f"{where}: category_language_offset does not match the labels")
        if offset is not None:
            self._check_language_window(where)
        if self.skills and self.arrays.get("skill_coef", np.zeros(0)).shape != (
            len(self.skills),
            dim,
        ):
            raise ConfigError(f"{where}: skill_coef does not match the manifest's skills")

    def _check_language_window(self, where: str) -> None:
        """The detector reads the prompt as it did in training: the offset was fitted on
        the flags of that window, so another window would serve another router silently."""
        block = self.manifest.get("language")
        if not isinstance(block, dict):
            raise ConfigError(f"{where}: a language offset needs the manifest's 'language' block")
        trained = (block.get("window_chars"), block.get("judged_chars"))
        if trained != (WINDOW, JUDGED):
            raise ConfigError(
                f"{where}: fitted with the language detector reading {trained[0]} characters "
                f"and judging {trained[1]}, but this coe-router reads {WINDOW} and judges "
                f"{JUDGED} (retrain the router with this version)"
            )
        if "gloss" in block and block["gloss"] != GLOSS_VERSION:
            raise ConfigError(
                f"{where}: fitted with gloss lexicon {block['gloss']}, but this coe-router "
                f"has {GLOSS_VERSION} (retrain the router with this version)"
            )


def softmax(logits: Array) -> Array:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    out: Array = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


# --- expert profiles --------------------------------------------------------------------------


@dataclass
class ExpertProfiles:
    """Measured quality of each expert per category and per skill (``profile`` output).

    ``scores[expert][category]`` is mean quality in [0, 1]; ``skills`` likewise.
    ``skill_counts[expert][skill]`` is how many items measured it (absent: unknown).
    ``cost``, ``latency_ms`` (p50) and ``seconds`` (mean, measured) are per request.
    """

    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    skills: dict[str, dict[str, float]] = field(default_factory=dict)
    skill_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | str) -> ExpertProfiles:
        """Read ``profiles.json``."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"expert profiles {path}: cannot read: {exc}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: Any, where: str = "expert profiles") -> ExpertProfiles:
        """Parse the JSON shape ``{"experts": {name: {"categories": {c: {"score": x}}}}}``."""
        experts = raw.get("experts") if isinstance(raw, Mapping) else None
        if not isinstance(experts, Mapping):
            raise ConfigError(f"{where}: expected an object with 'experts'")
        out = cls()
        for name, prof in experts.items():
            out.categories[name] = _scores(prof.get("categories", {}))
            out.skills[name] = _scores(prof.get("skills", {}))
            out.skill_counts[name] = _counts(prof.get("skills", {}))
            if "cost" in prof:
                out.cost[name] = float(prof["cost"])
            if "latency_ms_p50" in prof:
                out.latency_ms[name] = float(prof["latency_ms_p50"])
            if "seconds_per_request" in prof:
                out.seconds[name] = float(prof["seconds_per_request"])
        return out


def _scores(block: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in block.items():
        score = value.get("score") if isinstance(value, Mapping) else value
        if isinstance(score, int | float) and math.isfinite(score):
            out[key] = float(score)
    return out


def _counts(block: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in block.items():
        n = value.get("n") if isinstance(value, Mapping) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            out[key] = n
    return out
