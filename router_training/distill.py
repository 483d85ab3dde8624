"""``distill-encoder``: a static embedding table distilled from a sentence transformer.

The model2vec recipe (Tulkens & van Dongen, 2024), written out here so the build needs
only what training already has (torch + transformers via sentence-transformers, numpy),
not ``model2vec[distill]``, whose transformers pin conflicts with the local experts':

1. every word piece of the vocabulary goes through the transformer alone, as
   ``[CLS] piece [SEP]``, and its output is mean-pooled (the model's own pooling);
2. PCA to ``dims`` dimensions (eigendecomposition, signs fixed: deterministic);
3. SIF weighting by Zipf rank, ``sif / (sif + p(rank))`` with vocabulary ids as ranks
   (frequent pieces come first in WordPiece vocabularies), so "the" weighs little;
4. int8 rows with one float32 scale each (a quarter of float32's size: 9.5 MB compressed for
   30,522 x 384), saved beside a copy of the model's ``tokenizer.json``.

The result is read by :class:`coe_router.routing.static_encoder.StaticEncoder`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from coe_router.routing.encoder import resolve_encoder_path
from coe_router.routing.static_encoder import CONFIG, STATIC_FORMAT, TABLE, TOKENIZER, table_sha256

#: Pieces that never occur in text: their rows are zero (and they take no Zipf rank).
_UNUSED = re.compile(r"^\[unused\d+\]$")


def token_outputs(model_dir: Path, batch: int = 512, log: Any = print) -> NDArray[np.float32]:
    """``(V, H)``: the transformer's mean-pooled output for each vocabulary piece alone."""
    import torch
    from transformers import AutoModel

    from coe_router.routing.static_encoder import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(model_dir / TOKENIZER)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    size = tok.get_vocab_size()
    out = np.zeros((size, model.config.hidden_size), dtype=np.float32)
    started = time.monotonic()
    with torch.inference_mode():
        for start in range(0, size, batch):
            ids = torch.arange(start, min(start + batch, size))
            seq = torch.stack(
                [torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1
            )
            hidden = model(input_ids=seq, attention_mask=torch.ones_like(seq)).last_hidden_state
            out[start : start + len(ids)] = hidden.mean(1).float().numpy()
            if start // batch % 10 == 0:
                log(f"  {start + len(ids)}/{size} pieces ({time.monotonic() - started:.0f} s)")
    return out


def pca(x: NDArray[np.float32], dims: int) -> NDArray[np.float32]:
    """Projection on the top ``dims`` principal components, each signed so its largest
    absolute score is positive (eigenvector signs are otherwise arbitrary)."""
    x64 = x.astype(np.float64)
    centered = x64 - x64.mean(0)
    cov = centered.T @ centered / max(len(x) - 1, 1)
    _vals, vecs = np.linalg.eigh(cov)
    comps = vecs[:, ::-1][:, :dims]
    scores = centered @ comps
    signs = np.sign(scores[np.abs(scores).argmax(0), np.arange(scores.shape[1])])
    out: NDArray[np.float32] = (scores * signs).astype(np.float32)
    return out


def sif_weights(n: int, sif: float) -> NDArray[np.float64]:
    """Zipf-estimated probability of rank 0..n-1 turned into SIF weights."""
    inv_rank = 1.0 / np.arange(2, n + 2)
    proba = inv_rank / inv_rank.sum()
    out: NDArray[np.float64] = sif / (sif + proba)
    return out


def quantize(rows: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """int8 rows and a float32 scale per row (``row ~= q * scale``)."""
    peak = np.abs(rows).max(1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(rows / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


def distill(
    source: str, out_dir: Path, *, dims: int = 384, sif: float = 1e-4, log: Any = print
) -> dict[str, Any]:
    """Distill the sentence-transformers model ``source`` into ``out_dir``; returns the
    encoder's config (also written as ``encoder.json``)."""
    from coe_router.routing.static_encoder import load_tokenizer

    model_dir = resolve_encoder_path(source)
    started = time.monotonic()
    log(f"distilling {model_dir} -> {out_dir} ({dims}-d, sif {sif})")
    raw = token_outputs(model_dir, log=log)
    tok = load_tokenizer(model_dir / TOKENIZER)
    vocab = tok.get_vocab()
    special = {tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")}
    keep = np.array(
        sorted(i for p, i in vocab.items() if i not in special and not _UNUSED.match(p))
    )
    table = np.zeros((raw.shape[0], dims), dtype=np.float32)
    reduced = pca(raw[keep], dims)
    # Ids ascend in `keep`, so a piece's rank is its position there.
    table[keep] = reduced * sif_weights(len(keep), sif)[:, None].astype(np.float32)
    rows, scales = quantize(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / TABLE, rows=rows, scales=scales)
    shutil.copyfile(model_dir / TOKENIZER, out_dir / TOKENIZER)
    libraries = {}
    for lib in ("torch", "transformers", "tokenizers", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            libraries[lib] = version(lib)
    config: dict[str, Any] = {
        "format": STATIC_FORMAT,
        "dim": dims,
        "vocab_size": int(raw.shape[0]),
        "unk_id": tok.token_to_id("[UNK]"),
        "distilled_from": source,
        "recipe": {
            "pooling": "mean over [CLS] piece [SEP]",
            "pca_dims": dims,
            "sif_coefficient": sif,
            "quantization": "int8 per-row scale",
            "pieces": len(keep),
        },
        "libraries": libraries,
        "created_by": f"python -m router_training distill-encoder --source {source} "
        f"--dims {dims} -o {out_dir}",
        "table_sha256": "",
    }
    config["table_sha256"] = table_sha256(out_dir)
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out_dir} in {time.monotonic() - started:.0f} s (sha256 {config['table_sha256']})")
    return config
