"""The cascade's second reader: all-MiniLM-L6-v2 fine-tuned end to end on the router's
labels, run by onnxruntime (no torch), asked only when the fast router is unsure.

The static table reads a prompt as an average of word vectors; a fine-tuned transformer
reads word order and context ("write a story about a nurse" is writing, not medicine).
It is 10 to 80 times slower (about 6 ms for a short prompt, 47 ms at its 128-piece window,
on one core of this 2-core CPU), so the category router asks it only when its own
confidence is below ``escalate_below`` and blends the two readings:
``log p = log p_fast + weight * log softmax(second reader's logits)`` (see
:class:`~coe_router.routing.category.CategoryRouter`).

A second-reader directory holds ``classifier.json`` (format tag, labels, window, the
model's sha256, the blend weight and the escalation threshold chosen at training time),
``model.onnx`` (int8 weights) and ``tokenizer.json``. It is written by
``python -m router_training fine-tune``.

Invariant: :func:`window_ids` is the one place that turns a read prompt into the model's
input, for training and serving alike; a prompt becomes at most ``max_tokens`` ids,
``[CLS] head ... tail [SEP]`` (the tokenizer's own start and end ids), and a prompt over
``2 * CHAR_WINDOW`` characters is cut to its two ends before it is tokenized, so tokenizing
costs the same at any length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coe_router.errors import ConfigError
from coe_router.routing.encoder import Array, PerPath
from coe_router.routing.language import readable
from coe_router.routing.static_encoder import CHAR_WINDOW, load_tokenizer

#: ``classifier.json``'s format tag.
SECOND_READER_FORMAT = "coe-router/second-reader"
CONFIG = "classifier.json"
MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"


def window_ids(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """The model's input ids for one read prompt (see the module's invariant)."""
    if len(text) > 2 * CHAR_WINDOW:
        text = f"{text[:CHAR_WINDOW]} {text[-CHAR_WINDOW:]}"
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False).ids
    body = max_tokens - 2
    if len(ids) > body:
        head = body // 2
        ids = ids[:head] + ids[len(ids) - (body - head) :]
    # The model's own bookends (``[CLS] [SEP]`` for BERT vocabularies, ``<s> </s>`` for
    # MPNet's), from the tokenizer's template rather than by name.
    start, end = tokenizer.encode("").ids
    return [start, *ids, end]


def pad(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """``(input_ids, attention_mask)``, int64, right-padded to the longest row."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SecondReader:
    """A fine-tuned classifier directory, loaded once per process (:func:`load_second_reader`).

    :meth:`encode` is an :class:`~coe_router.routing.encoder.Encoder`: its rows are the
    classifier's logits, so the router's :class:`~coe_router.routing.embedder.AsyncEmbedder`
    runs it off the event loop and caches it like any encoder.
    """

    def __init__(self, path: Path) -> None:
        try:
            config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"second reader {path}: cannot read {CONFIG}: {exc}") from None
        if not isinstance(config, dict) or config.get("format") != SECOND_READER_FORMAT:
            raise ConfigError(f"second reader {path}: {CONFIG} is not {SECOND_READER_FORMAT!r}")
        try:
            self.labels: tuple[str, ...] = tuple(str(c) for c in config["labels"])
            self.max_tokens = int(config["max_tokens"])
            self.weight = float(config["blend_weight"])
            self.escalate_below = float(config["escalate_below"])
            expected = str(config["sha256"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"second reader {path}: {CONFIG} lacks {exc}") from None
        if file_sha256(path / MODEL) != expected:
            raise ConfigError(f"second reader {path}: {MODEL} does not match its sha256")
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "the second reader needs onnxruntime (pip install -e '.[router-static]')"
            ) from exc
        options = ort.SessionOptions()
        # One thread per call: the router's executor already runs two calls side by side.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path / MODEL), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = load_tokenizer(path / TOKENIZER)
        self.path = path

    @property
    def dim(self) -> int:
        """One logit per label."""
        return len(self.labels)

    def encode(self, texts: Sequence[str]) -> Array:
        """Logits ``(len(texts), len(labels))`` of the prompts as the router reads them."""
        rows = [window_ids(self._tokenizer, readable(t), self.max_tokens) for t in texts]
        ids, mask = pad(rows)
        out = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(out, dtype=np.float32)


load_second_reader = PerPath(SecondReader)
