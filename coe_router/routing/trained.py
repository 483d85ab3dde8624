"""What the trained strategies share: load an artifact, embed a conversation off the loop.

``category``, ``skill`` and ``retriever`` differ in how they turn an embedding into an
expert; reading options, finding the artifact, loading the encoder once and embedding
the latest turn and its context are the same for all three, and live here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coe_router.errors import ConfigError
from coe_router.protocol import ChatMessage
from coe_router.routing.artifact import Array, ExpertProfiles, RouterArtifact
from coe_router.routing.base import Candidate
from coe_router.routing.context import is_follow_up, split_turns
from coe_router.routing.embedder import AsyncEmbedder
from coe_router.routing.encoder import Encoder, encoder_for, kind_of

#: Options every trained strategy understands.
COMMON_OPTIONS = frozenset(
    {"artifact", "encoder", "threshold", "switch_confidence", "profiles", "cost_weight"}
)

_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(value: str | Path, what: str) -> Path:
    """An option path: absolute, else relative to the working directory, else to the
    project root (so ``deploy/routers/default`` works from any directory)."""
    path = Path(value).expanduser()
    for candidate in (path, _ROOT / path):
        if candidate.exists():
            return candidate
    raise ConfigError(f"{what} {str(value)!r} does not exist")


def check_options(strategy: str, options: Mapping[str, Any], extra: Iterable[str] = ()) -> None:
    """Unknown options are a configuration error, not silently ignored."""
    unknown = sorted(set(options) - COMMON_OPTIONS - set(extra))
    if unknown:
        raise ConfigError(f"{strategy} router: unknown options {unknown}")
    if "artifact" not in options and not isinstance(options.get("_artifact"), RouterArtifact):
        raise ConfigError(f"{strategy} router: option 'artifact' (a directory) is required")


def number(options: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    """A numeric option within ``[lo, hi]``."""
    value = options.get(key, default)
    if not isinstance(value, int | float) or not lo <= float(value) <= hi:
        raise ConfigError(f"router option {key!r} must be a number in [{lo}, {hi}], not {value!r}")
    return float(value)


class TrainedCore:
    """Artifact + encoder + embedder of one trained router.

    Options: ``artifact`` (directory), ``encoder`` (an :class:`Encoder` object, or a model
    path overriding the manifest's: a static encoder directory or a sentence-transformers
    model of the same dimension), ``profiles`` (``profiles.json``), ``threshold``,
    ``switch_confidence``, ``cost_weight``.

    With ``lexical`` (the default) the rows it embeds are the artifact's
    :meth:`~coe_router.routing.artifact.RouterArtifact.feature_encoder` rows: embedding,
    then the lexical block's logits and the not-English flag when the artifact has them. A
    strategy that compares embeddings only (the retriever) passes ``lexical=False``.
    """

    def __init__(self, strategy: str, options: Mapping[str, Any], *, lexical: bool = True) -> None:
        artifact = options.get("_artifact")
        if not isinstance(artifact, RouterArtifact):
            artifact = RouterArtifact.load(
                resolve_path(str(options["artifact"]), f"{strategy} router: artifact")
            )
        self.artifact = artifact
        encoder_opt = options.get("encoder")
        injected: Encoder | None = None
        if encoder_opt is not None and not isinstance(encoder_opt, str):
            injected = encoder_opt
        spec = dict(artifact.encoder)
        if isinstance(encoder_opt, str) and encoder_opt != spec.get("spec"):
            # Another model than the artifact's: its own kind, and not the pinned table's
            # hash (the dimension check below still guards against a mismatch).
            spec.update(spec=encoder_opt, kind=kind_of(encoder_opt))
            spec.pop("sha256", None)
        self.encoder = encoder_for(spec, injected)
        if self.encoder.dim != int(spec.get("dim", self.encoder.dim)):
            raise ConfigError(
                f"{strategy} router: encoder gives {self.encoder.dim}-d embeddings, "
                f"the artifact was trained on {spec.get('dim')}-d ones"
            )
        self.embedder = AsyncEmbedder(
            artifact.feature_encoder(self.encoder) if lexical else self.encoder
        )
        self.profiles = (
            ExpertProfiles.load(resolve_path(str(options["profiles"]), "profiles"))
            if options.get("profiles")
            else None
        )
        self.threshold = number(options, "threshold", artifact.fallback_threshold, 0.0, 1.0)
        self.switch_confidence = number(options, "switch_confidence", 0.6, 0.0, 1.0)
        self.cost_weight = number(options, "cost_weight", 0.0, 0.0, 1e6)

    @staticmethod
    def follow_up(messages: Sequence[ChatMessage]) -> bool:
        """Whether the latest user turn only makes sense with the conversation."""
        return is_follow_up(split_turns(messages).latest)

    async def embed_conversation(
        self, messages: Sequence[ChatMessage]
    ) -> tuple[Array, Array | None]:
        """Embeddings of the latest user turn and of the earlier user turns (or None)."""
        turns = split_turns(messages)
        texts = [turns.latest] if turns.context is None else [turns.latest, turns.context]
        rows = await self.embedder.embed(texts)
        return rows[0], (rows[1] if turns.context is not None else None)


def expert_scores_from_categories(
    proba: Array, labels: Sequence[str], expert_of: Mapping[str, str], experts: Sequence[str]
) -> Array:
    """Per-expert probability: the sum over the categories mapped to each expert."""
    out = np.zeros(len(experts), dtype=np.float32)
    index = {e: i for i, e in enumerate(experts)}
    for p, label in zip(proba, labels, strict=True):
        out[index[expert_of[label]]] += p
    return out


def ranked_alternatives(names: Sequence[str], scores: Array, chosen: str) -> tuple[Candidate, ...]:
    """Every expert but ``chosen``, best score first, as a decision's alternatives."""
    order = np.argsort(-scores)
    return tuple(
        Candidate(names[i], round(float(scores[i]), 4)) for i in order if names[i] != chosen
    )
