"""Symbolic-MoE skill routing: detect the skills a request needs, recruit the experts
that have them, and pick one of them to aggregate.

Skills are fine-grained (``algebra``, ``anatomy``, ``python`` ...), detected
independently (multi-label) by the artifact's skill detectors. Each expert has a skill
profile: its measured quality per skill from ``profiles``, shrunk toward its measured
quality on the skill's category by how few items measured the skill
(:data:`SKILL_PRIOR_ITEMS`); a skill it was not measured on takes the category's score, else
1.0 for the skills of the categories it declares in the catalog (the generalist gets a
floor so it is always recruitable). An expert's score is ``sum_s p(s) * profile(expert, s)``
over the request's top skills, each profile net of ``cost_weight * cost`` (floored at 0);
the top ``k`` are recruited. :meth:`SkillRouter.recruit` returns
the whole recruitment (for multi-expert synthesis); :meth:`SkillRouter.route` answers
with the best one and lists the other recruits, best first, in ``alternatives``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coe_router.catalog import Catalog
from coe_router.errors import ConfigError
from coe_router.protocol import ChatMessage
from coe_router.routing.artifact import Array
from coe_router.routing.base import ROUTER_CLS, Candidate, Recruitment, RoutingDecision
from coe_router.routing.context import blend
from coe_router.routing.trained import TrainedCore, check_options, number

#: Profile value of the generalist for skills it was not measured or declared on.
_GENERALIST_FLOOR = 0.25

#: Pseudo-items of the category's score behind each measured skill score. `profile` asks
#: 1 to 5 items per skill but 15 to 31 per category, so one wrong answer must not take a
#: skill from its category's 0.45 to 0; a skill measured on 8 items weighs as much as its
#: category. Scores without a count (hand-written profiles) are taken as they are.
SKILL_PRIOR_ITEMS = 8.0


@dataclass(frozen=True, slots=True)
class SkillRecruitment(Recruitment):
    """A recruitment, with the skills it was made for."""

    skills: tuple[tuple[str, float], ...]
    category: str | None
    sticky: bool
    #: The latest turn was flagged not English, so ``category`` leaned on the traffic prior.
    not_english: bool = False


class SkillRouter:
    """Multi-label skills -> expert skill profiles -> top-k recruitment (see module doc).

    Options: ``artifact`` (required, with skill detectors), ``top_k`` (default 3),
    ``top_skills`` (skills that count per request, default 5), ``aggregator`` (a fixed
    expert; default: the best recruit), ``profiles``, ``threshold``,
    ``switch_confidence``, ``encoder``.
    """

    name = "skill"

    def __init__(self, catalog: Catalog, options: Mapping[str, Any]) -> None:
        check_options(self.name, options, {"_artifact", "top_k", "top_skills", "aggregator"})
        self.core = TrainedCore(self.name, options)
        artifact = self.core.artifact
        if not artifact.skills:
            raise ConfigError("skill router: the artifact has no skills (fit with skills)")
        self.skills = artifact.skills
        self.top_k = int(number(options, "top_k", 3, 1, 64))
        self.top_skills = int(number(options, "top_skills", 5, 1, 1000))
        self.generalist = catalog.generalist.name
        aggregator = options.get("aggregator")
        if aggregator is not None and catalog.expert(str(aggregator)) is None:
            raise ConfigError(f"skill router: aggregator {aggregator!r} is not an expert")
        self.aggregator = str(aggregator) if aggregator is not None else None
        self.experts = [e.name for e in catalog.experts]
        skill_category: dict[str, str] = artifact.manifest.get("skill_categories", {})
        profiles = self.core.profiles
        profile = np.zeros((len(self.experts), len(self.skills)), dtype=np.float32)
        for i, spec in enumerate(catalog.experts):
            skills = profiles.skills.get(spec.name, {}) if profiles else {}
            counts = profiles.skill_counts.get(spec.name, {}) if profiles else {}
            categories = profiles.categories.get(spec.name, {}) if profiles else {}
            for j, skill in enumerate(self.skills):
                category = skill_category.get(skill)
                if category in categories:
                    prior = categories[category]
                elif category in spec.categories:
                    prior = 1.0
                else:
                    prior = _GENERALIST_FLOOR if spec.generalist else 0.0
                if skill in skills and skill in counts:
                    n = counts[skill]
                    prior = (n * skills[skill] + SKILL_PRIOR_ITEMS * prior) / (
                        n + SKILL_PRIOR_ITEMS
                    )
                elif skill in skills:
                    prior = skills[skill]
                profile[i, j] = prior
            # Quality net of cost, as the category router's map weighs it: with measured
            # profiles the 3x-cost coder is a little better at nearly every skill, and
            # without a price it would be recruited for almost everything.
            profile[i] = np.maximum(profile[i] - self.core.cost_weight * spec.cost, 0.0)
        #: ``(experts, skills)``: how good each expert is at each skill.
        self.profile = profile

    def _expert_scores(self, skill_proba: Array) -> Array:
        """Normalized expert scores from one row of skill probabilities."""
        keep = np.argsort(-skill_proba)[: self.top_skills]
        raw = self.profile[:, keep] @ skill_proba[keep]
        total = float(raw.sum())
        if total <= 0:
            raw = np.array([1.0 if e == self.generalist else 0.0 for e in self.experts])
            total = 1.0
        out: Array = (raw / total).astype(np.float32)
        return out

    async def recruit(
        self, messages: Sequence[ChatMessage], k: int | None = None
    ) -> SkillRecruitment:
        """The top ``k`` experts (default ``top_k``) and the aggregator for their answers."""
        latest, context = await self.core.embed_conversation(messages)
        rows = latest[None] if context is None else np.stack([latest, context])
        skill_proba = self.core.artifact.skill_proba(rows)
        scores = [self._expert_scores(r) for r in skill_proba]
        mixed = blend(
            scores[0],
            scores[1] if context is not None else None,
            self.core.switch_confidence,
            follow_up=self.core.follow_up(messages),
        )
        order = [mixed.choice, *(i for i in np.argsort(-mixed.scores) if i != mixed.choice)]
        recruits = tuple(
            Candidate(self.experts[i], round(float(mixed.scores[i]), 4))
            for i in order[: k or self.top_k]
        )
        top = np.argsort(-skill_proba[0])[: self.top_skills]
        skills = tuple((self.skills[j], round(float(skill_proba[0][j]), 4)) for j in top)
        category_proba = self.core.artifact.category_proba(latest[None])[0]
        category = self.core.artifact.labels[int(np.argmax(category_proba))]
        return SkillRecruitment(
            experts=recruits,
            skills=skills,
            category=category,
            sticky=mixed.sticky,
            aggregator=self.choose_aggregator(recruits),
            not_english=self.core.artifact.flags_not_english(latest),
        )

    def choose_aggregator(self, recruits: Sequence[Candidate]) -> str:
        """Who synthesizes the recruits' answers: the configured one, else the best recruit."""
        return self.aggregator or recruits[0].expert

    async def route(self, messages: Sequence[ChatMessage]) -> RoutingDecision:
        """The best recruit answers; the other recruits are the alternatives, best first."""
        rec = await self.recruit(messages)
        best = rec.experts[0]
        skills = ", ".join(f"{s} {p:.2f}" for s, p in rec.skills[:3])
        if best.score < self.core.threshold:
            expert = self.generalist
            reason = f"recruits below the {self.core.threshold:.2f} threshold; skills: {skills}"
        else:
            expert = best.expert
            reason = f"skills: {skills}; aggregator {rec.aggregator!r}"
        if rec.not_english:
            # Skills are read from the rows alone; only the category carries the offset.
            reason += f"; not in English, so category {rec.category!r} leans on the traffic prior"
        return RoutingDecision(
            expert=expert,
            category=rec.category,
            confidence=best.score,
            strategy=self.name,
            alternatives=tuple(c for c in rec.experts if c.expert != expert),
            reason=reason,
        )


ROUTER_CLS["skill"] = SkillRouter
