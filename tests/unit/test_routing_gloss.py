"""Glosses: what an English router reads of a prompt in another language."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coe_router.errors import ConfigError
from coe_router.routing.artifact import RouterArtifact
from coe_router.routing.gloss import GLOSS_VERSION, LEXICON, SCANNED, as_read, gloss
from coe_router.routing.language import LanguageEncoder, readable
from tests.unit.test_routing_support import FakeEncoder, fitted

RUSSIAN_MATH = "Решите уравнение: 2x + 5 = 17"
KOREAN_POEM = "가을에 대한 시를 써 주세요"


def test_task_words_get_their_english_gloss_once_each() -> None:
    assert gloss(RUSSIAN_MATH, "ru") == RUSSIAN_MATH + "\nsolve equation"
    assert gloss("写一首关于秋天的诗，再写一首诗", "zh").endswith("\nwrite poem")
    assert gloss("Escribe un cuento corto sobre una enfermera", "es").endswith("\nwrite story")
    # lid.176 names Wu Chinese and Malay apart; they read with Chinese and Indonesian.
    assert gloss("解这个方程", "wuu") == "解这个方程\nsolve equation"


def test_nothing_to_gloss_leaves_the_text_alone() -> None:
    assert gloss("Bonjour, comment vas-tu ?", "fr") == "Bonjour, comment vas-tu ?"
    assert gloss(RUSSIAN_MATH, "xx") == RUSSIAN_MATH  # no lexicon for the language
    assert gloss("write a poem", "en") == "write a poem"


def test_the_router_reads_glosses_digits_and_code_not_the_unknown_script() -> None:
    assert as_read(RUSSIAN_MATH, "ru") == ": 2x + 5 = 17 solve equation"
    assert as_read(KOREAN_POEM, "ko") == "write poem"
    assert as_read("用Python写一个快速排序函数", "zh") == "Python write function"
    # Latin scripts, Greek (math) and Vietnamese letters stay.
    assert as_read("Calcula α + β", "es") == "Calcula α + β calculate"
    # A Greek word is dropped, a Greek letter alone is a symbol and stays.
    assert as_read("Λύσε την εξίσωση: α + 2 = 5", "el") == ": α + 2 = 5 solve equation"
    assert as_read("Viết một bài thơ", "vi") == "Viết một bài thơ write poem"
    # Hebrew and Thai are dropped like Cyrillic; their task words still come through.
    assert as_read("כתוב שיר על הים", "he") == "write poem"
    assert as_read("แก้สมการ x + 2 = 5", "th") == "x + 2 = 5 solve equation"


def test_a_long_prompt_is_scanned_at_both_ends_only() -> None:
    middle = "x " * (3 * SCANNED)
    assert gloss("Решите " + middle + " ok", "ru").endswith("\nsolve")
    assert gloss("ok " + middle + " уравнение", "ru").endswith("\nequation")
    assert gloss("ok " + "y" * SCANNED + "уравнение" + "y" * SCANNED + " ok", "ru").endswith("ok")


@given(st.text(max_size=300), st.sampled_from([*LEXICON, "en", "xx"]))
def test_glossing_only_appends(text: str, lang: str) -> None:
    """Invariant: the prompt survives whole, followed by English words only."""
    out = gloss(text, lang)
    assert out.startswith(text)
    added = out[len(text) :]
    assert added == "" or (added.startswith("\n") and added[1:].replace(" ", "").isascii())


def test_readable_glosses_only_prompts_not_in_english() -> None:
    assert readable("Write a poem about autumn") == "Write a poem about autumn"
    assert readable(RUSSIAN_MATH) == as_read(RUSSIAN_MATH, "ru")


def test_a_glossing_encoder_encodes_the_readable_text_and_flags_the_original() -> None:
    enc = FakeEncoder()
    texts = ["Write a poem about autumn", RUSSIAN_MATH, KOREAN_POEM]
    rows = LanguageEncoder(enc, glossed=True).encode(texts)
    assert rows[:, -1].tolist() == [0.0, 1.0, 1.0]
    assert np.allclose(rows[:, :-1], enc.encode([readable(t) for t in texts]))
    plain = LanguageEncoder(enc).encode(texts)
    assert np.allclose(plain[:, :-1], enc.encode(texts))


def test_fit_records_the_lexicon_and_serving_follows_it(tmp_path: Path) -> None:
    common = {"traffic_prior_source": "src-code", "other_language_strength": 1.0}
    art = fitted(FakeEncoder(), fit_skills=False, gloss=True, **common)
    assert art.manifest["language"]["gloss"] == GLOSS_VERSION
    assert art.glossed
    encoder = art.feature_encoder(FakeEncoder())
    assert isinstance(encoder, LanguageEncoder)
    assert encoder.glossed
    unglossed = fitted(FakeEncoder(), fit_skills=False, **common)
    assert "gloss" not in unglossed.manifest["language"]
    assert not unglossed.glossed
    # A lexicon changed since the fit would read prompts differently: refused at load.
    art.manifest["language"]["gloss"] = "0" * 16
    art.save(tmp_path)
    with pytest.raises(ConfigError, match="gloss lexicon"):
        RouterArtifact.load(tmp_path)
    # Without a language offset serving would not gloss, so fitting glossed text is refused.
    with pytest.raises(ValueError, match="gloss needs a language offset"):
        fitted(FakeEncoder(), fit_skills=False, gloss=True)
