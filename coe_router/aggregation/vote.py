"""Voting over the panel's answers: normalize each final answer, take the majority.

Final answers are compared in normalized form (:func:`normalize`):

* an option letter, A to J in capitals: "The answer is (B)", "Answer: **C**", a line
  that is only "D." or an answer that starts with "B) Paris" -> ``letter:B``;
* else a number: the one after an explicit marker ("the answer is", "answer:",
  "####", ``\\boxed{}``) when there is one, else the last number of the text;
  "1,234.50" -> ``number:1234.5``, "18.00" -> ``number:18``;
* else short text: lower case, no punctuation, at most a dozen words.

Ties go to the answer whose supporters have the highest router score.
"""

from __future__ import annotations

import re
from collections import defaultdict
from decimal import Decimal, InvalidOperation

from coe_router.aggregation.panel import PanelAnswer

#: Only the end of an answer is read (where final answers are): with linear-time
#: patterns this bounds the work per answer, whatever an expert sends.
SCAN_CHARS = 2000

# The patterns run in linear time: no two quantifiers can match the same characters
# (each ``\s*`` follows a mandatory non-space token), and whole lines use ``[ \t]*``, not
# ``\s*``, so a run of blank lines is not re-scanned from each line start.
#
# Letters are matched in capitals only: "the answer is a prime" is not option A. In order of
# trust: after "answer", alone on a line or opening the answer ("B) Paris"), after "option".
_LETTERS = [
    re.compile(r"(?i:answer)\s*(?:is\s*)?(?:[:=]\s*)?\(?\*{0,2}([A-J])\b(?!['\u2019])"),
    re.compile(
        r"^[ \t]*\(?\*{0,2}([A-J])\*{0,2}[).:]?[ \t\r]*$|\A\s*\(?\*{0,2}([A-J])\*{0,2}[).:]\s",
        re.MULTILINE,
    ),
    re.compile(r"(?i:option|choice)\s*(?:is\s*)?(?:[:=]\s*)?\(?\*{0,2}([A-J])\b(?!['\u2019])"),
]
_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
#: A number right after an explicit final-answer marker.
_MARKED = re.compile(
    r"(?:answer\s*(?:is\s*)?|####\s*|final\s*result\s*(?:is\s*)?)"
    r"(?:[:=]\s*)?(?:\*+\s*)?(?:[$\u20ac\u00a3]\s*)?(" + _NUMBER + ")",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _number(text: str) -> str:
    """``1,234.50`` -> ``1234.5``; exact (no rounding, so distinct numbers stay distinct).

    Formatted as a :class:`~decimal.Decimal`, never through ``int``: Python refuses to
    turn integers of more than 4,300 digits into text, and an expert may send one.
    """
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex only matches numbers
        return text
    if value == value.to_integral_value():
        return format(value.to_integral_value(), "f")
    return format(value.normalize(), "f")


def normalize(text: str) -> str | None:
    """The comparable final answer of ``text``, or None when it has none.

    Reads the last :data:`SCAN_CHARS` characters only; linear in those.
    """
    text = text[-SCAN_CHARS:]
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    for pattern in _LETTERS:
        found = [m if isinstance(m, str) else "".join(m) for m in pattern.findall(text)]
        if found:
            return f"letter:{found[-1]}"
    marked = _MARKED.findall(text)
    numbers = marked or _NUMBER_RE.findall(text)
    if numbers:
        return f"number:{_number(numbers[-1].rstrip(','))}"
    words = re.sub(r"[^\w\s]", "", text.lower()).split()
    if 0 < len(words) <= 12:
        return "text:" + " ".join(words)
    return None


def vote(answers: list[PanelAnswer]) -> PanelAnswer:
    """The winning answer (marks its supporters ``used``); falls back to the best score."""
    ok = [a for a in answers if a.ok]
    groups: dict[str, list[PanelAnswer]] = defaultdict(list)
    for a in ok:
        key = normalize(a.text)
        if key is not None:
            groups[key].append(a)
    if not groups:
        return best(answers)
    winner = max(groups.values(), key=lambda g: (len(g), max(a.score for a in g)))
    for a in winner:
        a.used = True
    return max(winner, key=lambda a: a.score)


def best(answers: list[PanelAnswer]) -> PanelAnswer:
    """The answer of the most confident expert that answered."""
    chosen = max((a for a in answers if a.ok), key=lambda a: a.score)
    chosen.used = True
    return chosen
