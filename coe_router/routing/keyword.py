"""Keyword routing: the catalog's word lists per category, then category -> expert.

The first, rule-based step of the CoE two-step (category, then expert). It costs
microseconds, needs no model, and is the baseline the trained strategies beat.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from coe_router.catalog import Catalog
from coe_router.errors import ConfigError
from coe_router.protocol import ChatMessage
from coe_router.routing.base import ROUTER_CLS, Candidate, RoutingDecision, message_text

#: Weight of a keyword hit in an earlier user turn relative to the latest one.
_CONTEXT_WEIGHT = 0.5


def _bounded(word: str) -> str:
    """A whole-word pattern; the edges that are not word characters ("c++", ".py") need
    no boundary, so "main.py" and "c++" still match."""
    head = r"(?<!\w)" if re.match(r"\w", word) else ""
    tail = r"(?!\w)" if re.search(r"\w$", word) else ""
    return head + re.escape(word) + tail


def _pattern(words: set[str]) -> re.Pattern[str]:
    """One pattern for a category's words, longest first.

    Words that start and end with a word character share one pair of boundary checks
    around their alternation: per-word lookarounds made routing about 8x slower.
    """
    longest_first = sorted(words, key=len, reverse=True)
    plain = [w for w in longest_first if re.match(r"\w", w) and re.search(r"\w$", w)]
    odd = [_bounded(w) for w in longest_first if w not in plain]
    parts = [rf"(?<!\w)(?:{'|'.join(map(re.escape, plain))})(?!\w)"] if plain else []
    return re.compile("|".join(parts + odd))


class KeywordRouter:
    """Counts distinct keyword hits per category in the user's turns.

    Confidence grows with the winner's hits and shrinks with competing ones:
    ``share * (1 - 0.5 ** hits)``; nothing matched means the generalist at 0.
    Options: ``keywords`` (category -> words) overrides the catalog's lists.
    """

    name = "keyword"

    def __init__(self, catalog: Catalog, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - {"keywords"})
        if unknown:
            raise ConfigError(f"keyword router: unknown options {unknown}")
        rules = _rules(options["keywords"]) if options.get("keywords") else catalog.keywords
        self._generalist = catalog.generalist.name
        self._expert_of: dict[str, str] = {}
        self._patterns: dict[str, re.Pattern[str]] = {}
        for category, words in rules.items():
            experts = catalog.experts_for(category)
            self._expert_of[category] = experts[0].name if experts else self._generalist
            # A blank keyword would compile to a pattern that matches every prompt.
            cleaned = {w.strip().lower() for w in words if w.strip()}
            if cleaned:
                self._patterns[category] = _pattern(cleaned)

    async def route(self, messages: Sequence[ChatMessage]) -> RoutingDecision:
        """Score categories on the latest user turn, earlier user turns at half weight."""
        user_turns = [message_text(m).lower() for m in messages if m.role == "user"]
        scores: dict[str, float] = {}
        for age, text in enumerate(reversed(user_turns)):
            weight = 1.0 if age == 0 else _CONTEXT_WEIGHT
            for category, pattern in self._patterns.items():
                found = len(set(pattern.findall(text)))
                if found:
                    scores[category] = scores.get(category, 0.0) + weight * found
        if not scores:
            return RoutingDecision(
                expert=self._generalist,
                category="general",
                confidence=0.0,
                strategy=self.name,
                reason="no keyword matched; the generalist answers",
            )
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        total = sum(scores.values())
        best, hits = ranked[0]
        # Alternatives on the confidence scale, so tier-aware routing can weigh them against it.
        confidence = _confidence(hits, total)
        alternatives = tuple(
            Candidate(self._expert_of[c], _confidence(s, total)) for c, s in ranked[1:]
        )
        return RoutingDecision(
            expert=self._expert_of[best],
            category=best,
            confidence=confidence,
            strategy=self.name,
            alternatives=alternatives,
            reason=f"{hits:g} weighted keyword hit(s) for {best!r}",
        )


def _confidence(hits: float, total: float) -> float:
    """``share * (1 - 0.5 ** hits)``: grows with hits, shrinks with competition."""
    value: float = (hits / total) * (1.0 - 0.5**hits)
    return round(value, 4)


def _rules(value: Any) -> Mapping[str, list[str]]:
    """The ``keywords`` option, checked: unlike the catalog's own lists nothing validated it,
    and a bare string would be taken letter by letter."""
    if not isinstance(value, Mapping) or not all(
        isinstance(c, str) and isinstance(ws, list) and all(isinstance(w, str) for w in ws)
        for c, ws in value.items()
    ):
        raise ConfigError("keyword router: option 'keywords' must map categories to word lists")
    return value


ROUTER_CLS["keyword"] = KeywordRouter
