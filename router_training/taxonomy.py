"""The routing taxonomy and how each public source's labels map onto it.

Eight categories: ``code, math, science, medicine, law, humanities, writing, general``.
``humanities`` covers the humanities and the social sciences; ``general`` is what no
specialist is for (business, trivia, everyday advice, chit-chat). docs/routing.md has
the same tables in prose.

Unlabelled request data (ShareGPT first turns, AlpacaEval instructions) is labelled by
:func:`rule_label`: a deterministic, documented rule with strong cues only; a prompt
that matches no cue of any category is ``general``; one whose cues are ambiguous
(cues of two categories) gets no label and is left out of training (and counted).
"""

from __future__ import annotations

import re

CATEGORIES = ("code", "math", "science", "medicine", "law", "humanities", "writing", "general")

_MMLU: dict[str, tuple[str, ...]] = {
    "code": (
        "college computer science",
        "high school computer science",
        "computer security",
        "machine learning",
    ),
    "math": (
        "abstract algebra",
        "college mathematics",
        "elementary mathematics",
        "high school mathematics",
        "high school statistics",
        "econometrics",
    ),
    "science": (
        "astronomy",
        "college biology",
        "college chemistry",
        "college physics",
        "conceptual physics",
        "electrical engineering",
        "high school biology",
        "high school chemistry",
        "high school physics",
    ),
    "medicine": (
        "anatomy",
        "clinical knowledge",
        "college medicine",
        "medical genetics",
        "nutrition",
        "professional medicine",
        "virology",
        "human aging",
    ),
    "law": ("international law", "jurisprudence", "professional law"),
    "humanities": (
        "formal logic",
        "high school european history",
        "high school us history",
        "high school world history",
        "logical fallacies",
        "moral disputes",
        "moral scenarios",
        "philosophy",
        "prehistory",
        "world religions",
        "high school geography",
        "high school government and politics",
        "high school macroeconomics",
        "high school microeconomics",
        "high school psychology",
        "human sexuality",
        "professional psychology",
        "security studies",
        "sociology",
        "us foreign policy",
    ),
    "general": (
        "business ethics",
        "global facts",
        "management",
        "marketing",
        "miscellaneous",
        "professional accounting",
        "public relations",
    ),
}

#: MMLU subject -> category (all 57 subjects).
MMLU_CATEGORY = {subject: cat for cat, subjects in _MMLU.items() for subject in subjects}

#: WritingBench sub-domains that ask for legal work (the rest of WritingBench is writing).
WRITINGBENCH_LAW = frozenset(
    {
        "Legal Consultation",
        "Legal Opinion",
        "Contract",
        "Legal Agreement",
        "Litigation Documents",
        "Judgment Document",
        "Defense Plea",
        "Case Bulletin",
        "Legal Awareness Campaign",
        "Regulatory Analysis",
    }
)


def _rx(*words: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w])(?:" + "|".join(words) + r")(?![\w])", re.IGNORECASE)


#: Strong cues per category, for request-style text. A cue is a phrase a person asking
#: about another topic would rarely type.
RULES: dict[str, re.Pattern[str]] = {
    "code": re.compile(
        r"```|(?<!\w)(?:python|javascript|typescript|java|c\+\+|c#|golang|rust|php|kotlin|"
        r"swift|sql|html|css|react(?:js)?|node\.?js|django|flask|numpy|pandas|regex|bash|"
        r"powershell|dockerfile|kubernetes|api|json|yaml|github|git|npm|vba|excel formula|"
        r"source code|code|coding|function|script|debug|compile[rd]?|stack ?trace|traceback|"
        r"algorithm|leetcode|unit tests?|refactor|def \w+\(|console\.log|#include|"
        r"public static|select \* from|pytorch|tensorflow|keras|jax|lstm|\w+\.py|"
        r"\w+_\w+\(|sql server|database|frontend|backend|linux|docker|orm|css|android app)(?!\w)",
        re.IGNORECASE,
    ),
    "math": _rx(
        r"math(?:s|ematics|ematical)?",
        "equations?",
        "integrals?",
        "derivatives?",
        "calculus",
        "algebra",
        "probability",
        "theorem",
        "prove that",
        r"solve for \w",
        "polynomial",
        "matrix",
        "eigen\\w*",
        "logarithm",
        "geometry",
        "trigonometry",
        r"\d+\s*[\^*/]\s*\d+",
        r"x\s*\^\s*\d",
    ),
    "medicine": _rx(
        "symptoms?",
        "diagnos\\w*",
        "diseases?",
        "medications?",
        "medicine",
        "dosage",
        "doctors?",
        "patients?",
        "clinical",
        "therapy",
        "infection",
        "vaccines?",
        "diabetes",
        "cancer",
        "blood pressure",
        "surgery",
        "pregnan\\w*",
        "nutrition",
    ),
    "law": _rx(
        "legal(?:ly)?",
        "lawyers?",
        "attorneys?",
        "lawsuits?",
        "court",
        "statutes?",
        "liability",
        "copyright",
        "trademark",
        "patent",
        "tenant",
        "landlord",
        "gdpr",
        "illegal",
        "contract law",
        "jurisdiction",
        "plaintiff",
        "defendant",
    ),
    "science": _rx(
        "physics",
        "chemistry",
        "biology",
        "molecules?",
        "atoms?",
        "electrons?",
        "quantum",
        "photosynthesis",
        "evolution",
        "gravity",
        "astronomy",
        "planets?",
        "dna",
        "proteins?",
        "chemical",
        "thermodynamics",
    ),
    "humanities": _rx(
        "history",
        "historical",
        "philosophy",
        "philosopher",
        "religion",
        "ancient",
        "empire",
        "century",
        "sociology",
        "psychology",
        "economics",
        "politics",
        "political",
        "war",
        "revolution",
    ),
    "writing": re.compile(
        r"(?:^|\b)(?:write|draft|compose|create|craft|generate)\s+(?:me\s+)?(?:an?\s+|the\s+|"
        r"\d+\s+|some\s+|short\s+)?(?:\w+\s+){0,3}?(?:essay|poem|story|stories|letter|e-?mail|"
        r"blog|article|speech|song|lyrics|script|paragraph|cover letter|caption|tweet|"
        r"post|headline|slogan|description|bio|summary|outline|review|report|novel|chapter|"
        r"haiku|limerick|copy)s?\b|\b(?:rewrite|rephrase|paraphrase|proofread|reword|"
        r"summari[sz]e)\b|\b(?:continue the (?:story|scene|chapter)|essay|poem|short story|"
        r"blog post|cover letter|lyrics|screenplay|copywriting)\b",
        re.IGNORECASE,
    ),
}

#: Categories whose cues are decisive on their own: a request to "write a poem about
#: history" is writing, a Python question mentioning "patients" is code.
_DOMINANT = ("code", "writing", "math")


_ENGLISH = frozenset(
    "the a an to of and in is for you i what how it that this with can my me be on are".split()  # noqa: SIM905
)


def looks_english(text: str) -> bool:
    """Crude: at least 8% of the words are common English function words."""
    words = re.findall(r"[a-z']+", text[:2000].lower())
    return bool(words) and sum(w in _ENGLISH for w in words) >= 0.08 * len(words)


def rule_label(text: str) -> tuple[str | None, str]:
    """The rule's category for a request, or ``None`` when its cues are ambiguous.

    Returns ``(category, why)``. Order: code, writing, math decide alone (their cues are
    strong and they are about the form of the answer); otherwise exactly one domain's
    cues must be present; no cue at all means ``general``.
    """
    head = text[:3000]
    for cat in _DOMINANT:
        if RULES[cat].search(head):
            return cat, f"{cat} cue"
    hits = sorted(
        {cat for cat in ("medicine", "law", "science", "humanities") if RULES[cat].search(head)}
    )
    if not hits:
        return "general", "no cue"
    if len(hits) == 1:
        return hits[0], f"{hits[0]} cue"
    return None, "ambiguous: " + ",".join(hits)
