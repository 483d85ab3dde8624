"""Embedding many prompts for training, with a progress bar and an on-disk cache.

Training re-embeds the same prompts often (leave-one-source-out, re-fits, evaluation):
the cache keys each text by sha1 under the encoder's spec, so only new texts cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from coe_router.routing.encoder import Array, Encoder


def load_encoder(spec: str, long_text: str) -> tuple[Encoder, dict[str, Any]]:
    """The encoder ``spec`` names and its description (what an artifact records)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model path or package, never the hub
    from coe_router.routing.encoder import describe_encoder

    print(f"loading encoder {spec}", file=sys.stderr, flush=True)
    return describe_encoder(spec, long_text)


def cache_key(info: dict[str, Any]) -> str:
    """What embeddings are cached under: the spec, and the table's hash for a static
    encoder (a rebuilt table must not reuse the old one's rows)."""
    return f"{info['spec']}@{info['sha256']}" if info.get("sha256") else str(info["spec"])


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def embed_all(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    cache: Path | None = None,
    batch: int = 64,
    desc: str = "embedding",
) -> Array:
    """``(len(texts), dim)`` embeddings; cached rows are reused, new ones added."""
    keys = [_key(t) for t in texts]
    known: dict[str, Array] = {}
    if cache is not None and (cache / "index.json").exists():
        index = json.loads((cache / "index.json").read_text())
        matrix = np.load(cache / "rows.npy")
        known = {k: matrix[i] for k, i in index.items()}
    todo = [i for i, k in enumerate(dict.fromkeys(keys)) if k not in known]
    unique = list(dict.fromkeys(keys))
    text_of = dict(zip(keys, texts, strict=True))
    missing = [unique[i] for i in todo]
    # Long texts first: batches of similar length waste less padding.
    missing.sort(key=lambda k: -len(text_of[k]))
    with tqdm(total=len(missing), desc=desc, unit="text", disable=not missing) as bar:
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            rows = encoder.encode([text_of[k] for k in chunk])
            known.update(zip(chunk, rows, strict=True))
            bar.update(len(chunk))
    if cache is not None and missing:
        cache.mkdir(parents=True, exist_ok=True)
        order = list(known)
        np.save(cache / "rows.npy", np.stack([known[k] for k in order]).astype(np.float32))
        (cache / "index.json").write_text(json.dumps({k: i for i, k in enumerate(order)}))
    return np.stack([known[k] for k in keys]).astype(np.float32)


def cache_dir(root: Path, encoder_spec: str, long_text: str) -> Path:
    """The cache directory for one encoder configuration."""
    name = hashlib.sha1(f"{encoder_spec}|{long_text}".encode()).hexdigest()[:12]
    return root / "embeddings" / name
