"""fine-tune's choice of the blend: the report that chose the weight and the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from router_training.cli import main
from router_training.finetune import blend_report


def test_the_blend_report_counts_who_is_right_and_who_is_asked() -> None:
    # Fast: right and sure on row 0, wrong and unsure on row 1, right but unsure on row 2.
    fast = np.array([[0.95, 0.05], [0.55, 0.45], [0.35, 0.65]])
    second = np.array([[0.0, 0.0], [-3.0, 3.0], [3.0, -3.0]])  # logits: rows 1, 2 -> 1, 0
    y = np.array([0, 1, 1])
    report = blend_report(fast, second, y)
    assert report["fast"] == pytest.approx(2 / 3)
    assert report["second"] == pytest.approx(2 / 3)  # a tie on row 0 takes the first label
    at_two = report["blend"]["2.0"]
    # Blended, the second reader wins rows 1 and 2 (its logits are far apart), so row 1 is
    # fixed and row 2 broken; row 0 it has no opinion on.
    assert at_two["all"] == pytest.approx(2 / 3)
    # Asked only below 0.6, it reads row 1 alone (fast 0.55) and fixes it: all three right.
    accuracy, asked = at_two["below 0.6"]
    assert (accuracy, asked) == (pytest.approx(1.0), pytest.approx(1 / 3))


def test_a_fold_outside_the_five_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fine-tune", "--holdout-fold", "5"])
    assert exc.value.code == 2


@pytest.mark.parametrize("source", ["arena-hard", "sharegpt-read"])
def test_a_held_out_source_must_be_a_public_training_source(
    source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arena-Hard is reserved, not a training source: a typo must not silently train on
    # everything. The read turns are the traffic the fast router's prior is measured on.
    with pytest.raises(SystemExit) as exc:
        main(["fine-tune", "--holdout-source", "writingbench", source])
    assert exc.value.code == 2
    assert source in capsys.readouterr().err
