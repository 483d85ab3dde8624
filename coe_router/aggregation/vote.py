"""Voting over the panel's answers: normalize each final answer, take the majority.

Final answers are compared in normalized form: an option letter ("The answer is
(B)" -> ``B``), else the last number ("1,234.50" -> ``1234.5``), else short text
(lower case, no punctuation, at most a dozen words). Ties go to the answer whose
supporters have the highest router score.
"""

from __future__ import annotations

import re
from collections import defaultdict

from coe_router.aggregation.panel import PanelAnswer

_LETTER = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?\*{0,2}([A-J])\b\)?|^\s*\(?([A-J])[).:]?\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def normalize(text: str) -> str | None:
    """The comparable final answer of ``text``, or None when it has none."""
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    letters = [a or b for a, b in _LETTER.findall(text)]
    if letters:
        return f"letter:{letters[-1].upper()}"
    numbers = _NUMBER.findall(text)
    if numbers:
        value = float(numbers[-1].replace(",", ""))
        return f"number:{value:g}"
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
