"""A checkable rubric for open-ended requests: IFEval-style verifiable instructions.

Writing and everyday requests have no reference answer, so ``profile`` scores them by
instructions a program can verify (IFEval, Zhou et al. 2023): "at least 300 words",
"no commas", "all lowercase", "include the keywords X and Y", "exactly 3 bullet points",
"wrap the answer in JSON", "end with P.S. ...". The score of a response is the share of
its prompt's instructions it follows (IFEval's instruction-level accuracy, strict mode).

Each checker follows the IFEval reference implementation's rule (cited per function);
words and sentences are counted with regular expressions instead of nltk (documented
in docs/routing.md, "Profiles"). Instructions that need a language detector or a
reference text (``language:response_language``, ``combination:repeat_prompt``) are not
implemented: prompts using them are left out of the profiling set, see
:func:`supported`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Checker = Callable[[str, Mapping[str, Any]], bool]

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def count_words(text: str) -> int:
    """Words as runs of word characters (IFEval: nltk's ``\\w+`` tokenizer)."""
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    """Sentences as runs ending in . ! or ? followed by space or the end (a text without
    any end mark is one sentence)."""
    stripped = text.strip()
    if not stripped:
        return 0
    ends = len(_SENTENCE_END.findall(stripped))
    return ends + (0 if re.search(r"[.!?]\W*$", stripped) else 1)


def _compare(actual: int, relation: str, target: int) -> bool:
    # IFEval's two relations: "less than" and "at least".
    return actual < target if relation == "less than" else actual >= target


def _no_comma(text: str, kw: Mapping[str, Any]) -> bool:
    return "," not in text


def _number_words(text: str, kw: Mapping[str, Any]) -> bool:
    return _compare(count_words(text), str(kw["relation"]), int(kw["num_words"]))


def _number_sentences(text: str, kw: Mapping[str, Any]) -> bool:
    return _compare(count_sentences(text), str(kw["relation"]), int(kw["num_sentences"]))


def _forbidden_words(text: str, kw: Mapping[str, Any]) -> bool:
    return not any(
        re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) for w in kw["forbidden_words"]
    )


def _highlighted(text: str, kw: Mapping[str, Any]) -> bool:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.strip("*").strip()]
    return len(single) + len(double) >= int(kw["num_highlights"])


def _frequency(text: str, kw: Mapping[str, Any]) -> bool:
    found = len(re.findall(re.escape(str(kw["keyword"])), text, re.IGNORECASE))
    return _compare(found, str(kw["relation"]), int(kw["frequency"]))


def _quotation(text: str, kw: Mapping[str, Any]) -> bool:
    t = text.strip()
    return len(t) > 1 and t[0] == '"' and t[-1] == '"'


def _lowercase(text: str, kw: Mapping[str, Any]) -> bool:
    return text == text.lower()


def _capital(text: str, kw: Mapping[str, Any]) -> bool:
    return text == text.upper()


def _capital_words(text: str, kw: Mapping[str, Any]) -> bool:
    caps = [w for w in _WORD.findall(text) if w.isupper()]
    return _compare(len(caps), str(kw["capital_relation"]), int(kw["capital_frequency"]))


def _existence(text: str, kw: Mapping[str, Any]) -> bool:
    return all(re.search(re.escape(k), text, re.IGNORECASE) for k in kw["keywords"])


def _title(text: str, kw: Mapping[str, Any]) -> bool:
    return any(t.strip() for t in re.findall(r"<<[^\n]+>>", text))


def _letter_frequency(text: str, kw: Mapping[str, Any]) -> bool:
    found = text.lower().count(str(kw["letter"]).lower())
    return _compare(found, str(kw["let_relation"]), int(kw["let_frequency"]))


def _bullets(text: str, kw: Mapping[str, Any]) -> bool:
    star = re.findall(r"^\s*\*[^\*].*$", text, re.MULTILINE)
    dash = re.findall(r"^\s*-.*$", text, re.MULTILINE)
    return len(star) + len(dash) == int(kw["num_bullets"])


def _placeholders(text: str, kw: Mapping[str, Any]) -> bool:
    return len(re.findall(r"\[.*?\]", text)) >= int(kw["num_placeholders"])


def _paragraphs(text: str, kw: Mapping[str, Any]) -> bool:
    parts = re.split(r"\s?\*\*\*\s?", text)
    count = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return False  # an empty paragraph between two dividers
    return count == int(kw["num_paragraphs"])


def _end_checker(text: str, kw: Mapping[str, Any]) -> bool:
    return text.strip().strip('"').lower().endswith(str(kw["end_phrase"]).strip().lower())


def _postscript(text: str, kw: Mapping[str, Any]) -> bool:
    marker = str(kw["postscript_marker"])
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, text.lower(), re.MULTILINE))


def _two_responses(text: str, kw: Mapping[str, Any]) -> bool:
    parts = text.split("******")
    valid = [p for i, p in enumerate(parts) if p.strip() or i in (0, len(parts) - 1)]
    filled = [p.strip() for p in valid if p.strip()]
    return len(valid) == len(parts) and len(filled) == 2 and filled[0] != filled[1]


def _json(text: str, kw: Mapping[str, Any]) -> bool:
    value = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    try:
        json.loads(value.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def _sections(text: str, kw: Mapping[str, Any]) -> bool:
    splitter = r"\s?" + re.escape(str(kw["section_spliter"])) + r"\s?\d+\s?"
    return len(re.split(splitter, text)) - 1 >= int(kw["num_sections"])


def _nth_paragraph_first_word(text: str, kw: Mapping[str, Any]) -> bool:
    paragraphs = [p for p in re.split(r"\n\n", text) if p.strip()]
    nth = int(kw["nth_paragraph"])
    if len(paragraphs) != int(kw["num_paragraphs"]) or nth > len(paragraphs):
        return False
    words = paragraphs[nth - 1].split()
    first = words[0].lstrip("'\"").rstrip(".,!?;:'\"").lower() if words else ""
    return first == str(kw["first_word"]).lower()


_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained(text: str, kw: Mapping[str, Any]) -> bool:
    return any(option in text.strip() for option in _OPTIONS)


#: IFEval instruction id -> checker(response, kwargs). The one list of what is supported.
CHECKERS: dict[str, Checker] = {
    "punctuation:no_comma": _no_comma,
    "length_constraints:number_words": _number_words,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": _paragraphs,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "keywords:forbidden_words": _forbidden_words,
    "keywords:frequency": _frequency,
    "keywords:existence": _existence,
    "keywords:letter_frequency": _letter_frequency,
    "detectable_format:number_highlighted_sections": _highlighted,
    "detectable_format:title": _title,
    "detectable_format:number_bullet_lists": _bullets,
    "detectable_format:json_format": _json,
    "detectable_format:multiple_sections": _sections,
    "detectable_format:constrained_response": _constrained,
    "detectable_content:number_placeholders": _placeholders,
    "detectable_content:postscript": _postscript,
    "startend:quotation": _quotation,
    "startend:end_checker": _end_checker,
    "change_case:english_lowercase": _lowercase,
    "change_case:english_capital": _capital,
    "change_case:capital_word_frequency": _capital_words,
    "combination:two_responses": _two_responses,
}


def supported(instructions: Sequence[str]) -> bool:
    """Whether every instruction of a prompt has a checker."""
    return bool(instructions) and all(i in CHECKERS for i in instructions)


def score_rubric(
    response: str, instructions: Sequence[str], kwargs: Sequence[Mapping[str, Any] | None]
) -> float:
    """The share of ``instructions`` that ``response`` follows, in [0, 1]."""
    if not instructions:
        raise ValueError("a rubric needs at least one instruction")
    followed = 0
    for name, kw in zip(instructions, kwargs, strict=True):
        checker = CHECKERS.get(name)
        if checker is None:
            raise ValueError(f"no checker for instruction {name!r}")
        args = {k: v for k, v in (kw or {}).items() if v is not None}
        followed += checker(response, args)
    return followed / len(instructions)
