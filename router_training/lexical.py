"""Fitting the lexical block (:mod:`coe_router.routing.lexical`): vocabulary, idf, rows.

The vocabulary is the word-piece unigrams and bigrams found in at least ``min_df``
training texts, the ``max_features`` most frequent by document frequency; idf is
scikit-learn's smoothed ``ln((1 + n) / (1 + df)) + 1``. Rows are computed by the serving
code itself (:meth:`LexicalBlock.vector`), so training and serving cannot drift apart.
No labels are used: the vocabulary may be fitted on every text a build has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from coe_router.routing.lexical import Ids, LexicalBlock, PieceEncoder, gram_keys

#: build-default's vocabulary: grams in at least 2 texts, the 50,000 most common.
MIN_DF = 2
MAX_FEATURES = 50_000


@dataclass
class LexicalFeatures:
    """A fitted vocabulary and the tf-idf rows of the texts it was fitted for."""

    keys: Ids
    idf: NDArray[np.float32]
    vocab_size: int
    matrix: Any  # scipy.sparse.csr_matrix, (n_texts, F)
    min_df: int = MIN_DF
    max_features: int = MAX_FEATURES

    def block(self, coef: NDArray[np.float32]) -> LexicalBlock:
        """The serving block with these words and ``coef`` ``(C, F)``."""
        return LexicalBlock(self.keys, self.idf, coef, self.vocab_size)

    def rows(self, pieces: Sequence[Sequence[Ids]]) -> Any:
        """tf-idf rows (csr) of other texts, by the same vocabulary."""
        return tfidf_rows(self.block(np.zeros((1, len(self.keys)), np.float32)), pieces)


def pieces_of(encoder: PieceEncoder, texts: Sequence[str], batch: int = 512) -> list[list[Ids]]:
    """The word pieces the static encoder reads of each text (its windows)."""
    out: list[list[Ids]] = []
    for start in range(0, len(texts), batch):
        out.extend(encoder.encode_with_pieces(texts[start : start + batch])[1])
    return out


def tfidf_rows(block: LexicalBlock, pieces: Sequence[Sequence[Ids]]) -> Any:
    """csr rows of ``pieces`` under ``block``'s vocabulary, as serving computes them."""
    from scipy.sparse import csr_matrix

    indptr, indices, data = [0], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for windows in pieces:
        cols, values = block.vector(windows)
        order = np.argsort(cols)
        indices.append(cols[order])
        data.append(values[order])
        indptr.append(indptr[-1] + cols.shape[0])
    return csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.array(indptr)),
        shape=(len(pieces), block.keys.shape[0]),
    )


def fit_lexical(
    pieces: Sequence[Sequence[Ids]],
    vocab_size: int,
    min_df: int = MIN_DF,
    max_features: int = MAX_FEATURES,
) -> LexicalFeatures:
    """Vocabulary and idf from ``pieces`` (see the module doc), and their rows."""
    n = len(pieces)
    grams = [np.unique(gram_keys(w, vocab_size)) for w in pieces]
    keys, df = np.unique(
        np.concatenate(grams) if grams else np.zeros(0, np.int64), return_counts=True
    )
    keep = df >= min_df
    keys, df = keys[keep], df[keep]
    if keys.shape[0] > max_features:
        # Most frequent first; ties by key, so the choice is deterministic.
        top = np.lexsort((keys, -df))[:max_features]
        keys, df = keys[top], df[top]
        order = np.argsort(keys)
        keys, df = keys[order], df[order]
    idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
    features = LexicalFeatures(keys.astype(np.int64), idf, vocab_size, None, min_df, max_features)
    features.matrix = features.rows(pieces)
    return features
