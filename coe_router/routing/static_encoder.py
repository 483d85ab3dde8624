"""The torch-free encoder: a static (model2vec-style) embedding table read with numpy.

A static encoder is one vector per word piece, distilled once from all-MiniLM-L6-v2 by
``python -m router_training distill-encoder`` (every vocabulary token run through the
transformer, PCA, Zipf/SIF weighting, int8 rows with a scale each). Embedding a text is
tokenizing it with the model's own ``tokenizer.json`` (the Rust ``tokenizers`` package)
and averaging the rows of its tokens: no torch, no sentence-transformers, well under a
millisecond for a chat prompt.

Long texts: tokenizing is the only cost that grows with the text, so only a HEAD and a
TAIL window of :data:`CHAR_WINDOW` characters are read; the embedding is the normalized
sum of the two windows' embeddings, so a question after a long paste still counts as
much as the paste (as with MiniLM's head+tail windows).

The directory holds ``encoder.json`` (format, dimension, how it was made), ``table.npz``
(``rows`` int8 ``(V, D)``, ``scales`` float32 ``(V,)``) and ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from coe_router.errors import ConfigError
from coe_router.routing.encoder import PerPath

Array = NDArray[np.float32]
Ids = NDArray[np.int64]

#: ``encoder.json``'s format tag: a directory without it is not a static encoder.
STATIC_FORMAT = "coe-router/static-encoder"
CONFIG = "encoder.json"
TABLE = "table.npz"
TOKENIZER = "tokenizer.json"

#: Characters read from each end of a long text. 1,000 characters is about 250 word
#: pieces, MiniLM's own window; tokenizing 2,000 characters costs ~0.5 ms on a slow core,
#: 10,000 would cost ~3 ms.
CHAR_WINDOW = 1000


def is_static_encoder(path: Path) -> bool:
    """Whether ``path`` is a static encoder directory (has a tagged ``encoder.json``)."""
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == STATIC_FORMAT


def table_sha256(path: Path) -> str:
    """sha256 of the embedding table file: what an artifact pins its encoder by."""
    digest = hashlib.sha256()
    with (path / TABLE).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StaticEncoder:
    """Averages int8 token rows; see the module doc. Thread-safe (read-only arrays)."""

    def __init__(
        self, path: Path, *, char_window: int = CHAR_WINDOW, sha256: str | None = None
    ) -> None:
        if not is_static_encoder(path):
            raise ConfigError(f"static encoder {path}: no {CONFIG} with format {STATIC_FORMAT}")
        if char_window < 16:
            raise ConfigError(f"static encoder: char_window must be >= 16, not {char_window}")
        if sha256 is not None and table_sha256(path) != sha256:
            raise ConfigError(
                f"static encoder {path}: {TABLE} does not match the sha256 the router "
                "artifact was trained with (rebuild it: python -m router_training "
                "distill-encoder, then retrain the router)"
            )
        self.path = path
        self.config: dict[str, Any] = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        self.char_window = char_window
        try:
            with np.load(path / TABLE, allow_pickle=False) as npz:
                self._rows: NDArray[np.int8] = np.ascontiguousarray(npz["rows"], dtype=np.int8)
                self._scales: Array = np.asarray(npz["scales"], dtype=np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"static encoder {path}: unreadable {TABLE}: {exc}") from None
        if self._rows.ndim != 2 or self._scales.shape != (self._rows.shape[0],):
            raise ConfigError(f"static encoder {path}: {TABLE} rows and scales disagree")
        self._tokenizer = load_tokenizer(path / TOKENIZER)
        unk = self.config.get("unk_id")
        self._unk = int(unk) if isinstance(unk, int) else -1

    @property
    def dim(self) -> int:
        """Embedding size."""
        return int(self._rows.shape[1])

    @property
    def vocab_size(self) -> int:
        """Number of word-piece ids (rows of the table)."""
        return int(self._rows.shape[0])

    def encode(self, texts: Sequence[str]) -> Array:
        """``(len(texts), dim)`` unit-norm rows (long texts: head and tail windows)."""
        return self.encode_with_pieces(texts)[0]

    def encode_with_pieces(self, texts: Sequence[str]) -> tuple[Array, list[list[Ids]]]:
        """The rows, and per text the piece ids of each window read (one window, or the
        head and the tail): what a router's lexical block counts, tokenized once."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        pieces: list[list[Ids]] = []
        w = self.char_window
        for i, text in enumerate(texts):
            parts = [text] if len(text) <= 2 * w else [text[:w], text[-w:]]
            windows = [self._ids(part) for part in parts]
            pieces.append(windows)
            if len(windows) == 1:
                out[i] = self._unit(self._pool(windows[0]))
            else:
                head, tail = (self._unit(self._pool(ids)) for ids in windows)
                out[i] = self._unit(head + tail)
        return out, pieces

    def _ids(self, text: str) -> Ids:
        ids: Ids = np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int64)
        kept: Ids = ids[(ids != self._unk) & (ids < self._rows.shape[0])]
        return kept

    def _pool(self, ids: Ids) -> Array:
        if ids.size == 0:
            return np.zeros(self.dim, dtype=np.float32)
        # Dequantize only the rows this text uses: (n,) scales @ (n, D) int8 rows.
        pooled: Array = (self._scales[ids] @ self._rows[ids].astype(np.float32)).astype(np.float32)
        return pooled

    @staticmethod
    def _unit(row: Array) -> Array:
        norm = float(np.linalg.norm(row))
        return row / norm if norm > 0 else row


def _tokenizer(path: Path) -> Any:
    """The Rust tokenizer, without padding or truncation (windows are cut in characters)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "the static encoder needs the tokenizers package (pip install tokenizers)"
        ) from exc
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception
        raise ConfigError(f"static encoder: cannot read {path}: {exc}") from None
    tok.no_padding()
    tok.no_truncation()
    return tok


#: A ``tokenizer.json`` (no padding, no truncation), loaded once per path per process.
load_tokenizer = PerPath(_tokenizer)
