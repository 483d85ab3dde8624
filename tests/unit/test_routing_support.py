"""Shared helpers of the trained-routing tests: a fake encoder and tiny synthetic data.

The fake encoder hashes words into a small vector space, so tests never load MiniLM
and a prompt's embedding is determined by its words (which the synthetic categories
keep apart).
"""

from __future__ import annotations

import random
import threading
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from coe_router.catalog import Catalog
from coe_router.routing.artifact import RouterArtifact
from coe_router.routing.encoder import Array, normalize
from router_training.data import Example
from router_training.fit import FitConfig, fit

DIM = 256
VOCAB = {
    "code": ["python", "function", "bug", "compile", "loop", "variable", "stacktrace", "refactor"],
    "math": ["integral", "equation", "solve", "derivative", "sum", "number", "prime", "matrix"],
    "writing": ["poem", "essay", "story", "letter", "rhyme", "paragraph", "narrative", "prose"],
    "general": ["weather", "dinner", "movie", "travel", "hello", "plan", "weekend", "coffee"],
}
FILLER = ["please", "can", "you", "help", "me", "with", "this", "the", "a", "my"]


class FakeEncoder:
    """Bag of hashed words -> unit vector; records the threads it ran on."""

    def __init__(self, dim: int = DIM) -> None:
        self._dim = dim
        self.threads: list[str] = []
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> Array:
        self.threads.append(threading.current_thread().name)
        self.calls += 1
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, zlib.crc32(word.strip(".,?!").encode()) % self._dim] += 1.0
        return normalize(out)


def synthetic(n_per: int = 30, seed: int = 0, skills: bool = True) -> list[Example]:
    """3 category words, 1 of another category, 2 filler words; skill: "<category>-skill"."""
    rng = random.Random(seed)
    rows = []
    for category, words in VOCAB.items():
        for _ in range(n_per):
            # One word of another category: real prompts are not perfectly separable, and
            # without overlap the calibrated confidence would be a degenerate 1.0.
            other = rng.choice([c for c in VOCAB if c != category])
            picked = [*rng.sample(words, 3), rng.choice(VOCAB[other]), *rng.sample(FILLER, 2)]
            rng.shuffle(picked)
            skill = [f"{category}-skill"] if skills else []
            rows.append(Example(" ".join(picked), category, skill, source=f"src-{category}"))
    return rows


def fitted(encoder: FakeEncoder | None = None, **config: Any) -> RouterArtifact:
    """An artifact fitted on :func:`synthetic` with the fake encoder."""
    encoder = encoder or FakeEncoder()
    rows = synthetic()
    x = encoder.encode([r.prompt for r in rows])
    info = {"spec": "fake", "long_text": "truncate", "dim": encoder.dim, "name": "fake"}
    return fit(rows, x, info, FitConfig(min_skill_examples=5, **config))


def catalog(**extra: Any) -> Catalog:
    """A generalist, a coder, a mathematician and a writer."""
    return Catalog.model_validate(
        {
            "experts": [
                {
                    "name": "general",
                    "served_model_name": "g",
                    "generalist": True,
                    "categories": ["general"],
                    "replicas": ["http://g:1"],
                },
                {
                    "name": "coder",
                    "served_model_name": "c",
                    "categories": ["code"],
                    "cost": 3,
                    "replicas": ["http://c:1"],
                },
                {
                    "name": "mathy",
                    "served_model_name": "m",
                    "categories": ["math"],
                    "cost": 2,
                    "replicas": ["http://m:1"],
                },
                {
                    "name": "writer",
                    "served_model_name": "w",
                    "categories": ["writing"],
                    "replicas": ["http://w:1"],
                },
            ],
            **extra,
        }
    )


def user(*turns: str) -> list[Any]:
    """A conversation: user turns with assistant replies between them."""
    from coe_router.protocol import ChatMessage

    out = []
    for i, t in enumerate(turns):
        if i:
            out.append(ChatMessage(role="assistant", content="ok"))
        out.append(ChatMessage(role="user", content=t))
    return out
