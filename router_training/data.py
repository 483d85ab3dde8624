"""Labelled prompts in JSONL: reading (every bad line reported by number), writing.

One object a line::

    {"prompt": "...", "category": "code", "skills": ["python"], "scores": {"code": 1.0},
     "source": "humaneval"}

``messages`` (OpenAI chat messages) may replace ``prompt``: the user turns are joined,
the latest last, which is how the gateway sees a conversation. ``skills``, ``scores``
and ``source`` are optional; ``source`` is what held-out-source evaluation groups by.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file has problems; the message lists every bad line."""


@dataclass
class Example:
    """One labelled prompt."""

    prompt: str
    category: str
    skills: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    source: str = ""
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSONL object for this example (``line`` is not stored)."""
        out: dict[str, Any] = {"category": self.category}
        if "messages" not in self.extra:
            out["prompt"] = self.prompt
        if self.skills:
            out["skills"] = self.skills
        if self.scores:
            out["scores"] = self.scores
        if self.source:
            out["source"] = self.source
        out.update(self.extra)
        return out


def _prompt_of(obj: dict[str, Any]) -> str:
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise ValueError("'prompt' must be a non-empty string")
        return str(obj["prompt"])
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("needs 'prompt' (a string) or 'messages' (a non-empty list)")
    users: list[str] = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError("every message needs a 'role'")
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if m["role"] == "user" and isinstance(content, str) and content.strip():
            users.append(content)
    if not users:
        raise ValueError("'messages' has no user turn with text")
    return "\n\n".join(users)


def parse_example(obj: Any, line: int = 0) -> Example:
    """Validate one decoded object; raises ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    prompt = _prompt_of(obj)
    category = obj.get("category")
    if not isinstance(category, str) or not category.strip():
        raise ValueError("'category' must be a non-empty string")
    skills = obj.get("skills", [])
    if not isinstance(skills, list) or not all(isinstance(s, str) for s in skills):
        raise ValueError("'skills' must be a list of strings")
    scores = obj.get("scores", {})
    if not isinstance(scores, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in scores.values()
    ):
        raise ValueError("'scores' must map expert names to numbers")
    source = obj.get("source", "")
    if not isinstance(source, str):
        raise ValueError("'source' must be a string")
    known = {"prompt", "messages", "category", "skills", "scores", "source"}
    return Example(
        prompt=prompt,
        category=category.strip(),
        skills=list(skills),
        scores={k: float(v) for k, v in scores.items()},
        source=source,
        line=line,
        extra={k: v for k, v in obj.items() if k not in known - {"messages"}},
    )


def read_jsonl(path: Path, *, skip_bad: bool = False) -> tuple[list[Example], list[str]]:
    """Examples of ``path`` and the problems found (``"path:LINE: why"``).

    Any bad line raises :class:`DataError` listing all of them, unless ``skip_bad``:
    then they are returned as problems for the caller to print. Blank lines are fine.
    """
    examples: list[Example] = []
    problems: list[str] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        # Split on "\n" only: JSON strings may hold U+2028, which splitlines() would break.
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                examples.append(parse_example(json.loads(raw), number))
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not valid JSON ({exc.msg})")
            except ValueError as exc:
                problems.append(f"{path}:{number}: {exc}")
    if problems and not skip_bad:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(
            f"{path}: {len(problems)} bad line(s) (use --skip-bad to skip them):\n  {shown}{more}"
        )
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples, problems


def read_files(
    paths: Sequence[Path], *, skip_bad: bool, log: Callable[[str], None]
) -> list[Example]:
    """The examples of every file in ``paths``, in order; with ``skip_bad``, each skipped
    line and a count per file go to ``log`` (see :func:`read_jsonl`)."""
    examples: list[Example] = []
    for path in paths:
        got, problems = read_jsonl(path, skip_bad=skip_bad)
        for problem in problems:
            log(f"skipped: {problem}")
        if problems:
            log(f"{path}: skipped {len(problems)} bad line(s), kept {len(got)}")
        examples.extend(got)
    return examples


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """A command's labelled JSONL files (one or more) and ``--skip-bad``."""
    parser.add_argument(
        "data",
        type=Path,
        nargs="+",
        help="labelled JSONL: {prompt|messages, category[, skills, scores, source]}",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad lines (each is reported) instead of stopping",
    )


def write_jsonl(path: Path, examples: Iterable[Example]) -> int:
    """Write ``examples``; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for ex in examples:
            out.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def data_hash(examples: Sequence[Example]) -> str:
    """sha256 over prompts and labels, order included: names the exact training data."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.prompt, ex.category, ex.skills], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()
