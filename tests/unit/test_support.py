"""The one percentile definition the benchmarks report with (``tests.support.percentile``)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from tests.support import percentile


def test_percentile_is_linear_interpolation_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5  # any order; even count: mean of two
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([10.0, 20.0], 25) == 12.5
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize("n", [2, 3, 10, 101, 1000])
def test_percentile_agrees_with_the_standard_librarys_inclusive_quantiles(n: int) -> None:
    # statistics.quantiles(method="inclusive") is the same definition (numpy's default).
    rng = random.Random(n)
    values = [rng.expovariate(1.0) for _ in range(n)]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for q in (1, 25, 50, 90, 99):
        assert percentile(values, q) == pytest.approx(cuts[q - 1], rel=1e-12, abs=1e-12)
