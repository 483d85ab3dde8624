"""Profiling experts: run each expert of a catalog on a labelled set and score the answers.

Experts are called through the gateway's own clients (:class:`ExpertPool` with
``launch=False``: against experts that are already running). Scoring:

* ``answer`` a letter A-E: exact match with the letter the answer commits to;
* ``answer`` a number: exact match with the answer's final number;
* ``test`` + ``entry_point`` (HumanEval style): the completion is run against the unit
  tests in a subprocess with a timeout;
* ``instructions`` + ``kwargs`` (IFEval style): the share of verifiable instructions
  followed (:mod:`router_training.rubric`).

An example may carry its own completion budget, ``extra["max_tokens"]`` (capped by the
run's ``max_tokens``).

Output: ``profiles.json`` (per expert: score per category and per skill, latency p50/p99,
cost, and what a request measured: seconds and tokens) that the category/skill routers
read, per-example scores (JSONL, the ``scores`` field that ``evaluate`` uses for the
quality-vs-cost table) and, with an artifact,
``pilots.npz``: per expert, the centroid of the prompts it did best on (RouterRetriever).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from coe_router.catalog import Catalog
from coe_router.config import LocalSettings, Settings
from coe_router.errors import CoEError
from coe_router.experts.pool import ExpertPool
from coe_router.metrics import Metrics
from router_training.data import Example, read_jsonl
from router_training.metrics import percentile_ms
from router_training.rubric import score_rubric

_STATED = re.compile(r"(?:answer|option|choice)(?: is)?\s*[:\-]?\s*\(?\**([A-E])\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LEADING = re.compile(r"^\s*\**\(?([A-E])(?:[\).:*]|[ \t]*$)", re.MULTILINE)


def committed_letter(response: str) -> str | None:
    """The option letter a response commits to, or None.

    A stated answer ("the answer is D", "Answer: (B)") wins, the last one if several;
    else the letter that starts lines, when only one letter does: a response that
    lists the options back ("A. ...\nB. ...") commits to none of them.
    """
    stated = _STATED.findall(response)
    if stated:
        return str(stated[-1]).upper()
    leading = {m.upper() for m in _LEADING.findall(response)}
    if len(leading) == 1:
        return str(leading.pop())
    return None


def score_letter(answer: str, response: str) -> float:
    """1.0 when the response commits to the right option letter (:func:`committed_letter`)."""
    return float(committed_letter(response) == answer.strip().upper())


def score_number(answer: str, response: str) -> float:
    """1.0 when the response's final number equals the reference number."""
    found = _NUMBER.findall(response)
    if not found:
        return 0.0
    try:
        return float(abs(float(found[-1].replace(",", "")) - float(answer.replace(",", ""))) < 1e-6)
    except ValueError:
        return 0.0


def extract_code(prompt: str, response: str) -> str:
    """The program to test: a fenced block if any; a body alone is appended to the prompt."""
    fenced = re.findall(r"```(?:python|py)?\n(.*?)```", response, re.DOTALL)
    code = fenced[0] if fenced else response
    return code if re.search(r"^\s*def \w+", code, re.MULTILINE) else prompt + code


def score_code(
    prompt: str, response: str, test: str, entry_point: str, timeout: float = 10.0
) -> float:
    """1.0 when the completion passes the unit tests (run in a subprocess, time-limited)."""
    program = f"{extract_code(prompt, response)}\n\n{test}\n\ncheck({entry_point})\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.py"
        path.write_text(program, encoding="utf-8")
        try:
            done = subprocess.run(
                [sys.executable, "-I", str(path)],
                cwd=tmp,
                timeout=timeout,
                capture_output=True,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return 0.0
    return float(done.returncode == 0)


def score(example: Example, response: str) -> float | None:
    """The score of ``response`` for ``example``, or None when it has no reference."""
    extra = example.extra
    if "instructions" in extra:
        return score_rubric(response, list(extra["instructions"]), list(extra["kwargs"]))
    if "test" in extra and "entry_point" in extra:
        return score_code(example.prompt, response, str(extra["test"]), str(extra["entry_point"]))
    answer = extra.get("answer")
    if answer is None:
        return None
    answer = str(answer)
    if re.fullmatch(r"[A-Ea-e]", answer.strip()):
        return score_letter(answer, response)
    return score_number(answer, response)


async def run_profiles(
    catalog: Catalog,
    examples: Sequence[Example],
    experts: Sequence[str] | None = None,
    max_tokens: int = 512,
    concurrency: int = 4,
    transport: httpx.AsyncBaseTransport | None = None,
    responses: list[dict[str, str]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Run and score; returns (profiles JSON, per-example expert scores).

    ``transport`` replaces the network (tests); ``responses``, one dict per example,
    receives each expert's answer text (for auditing the scorers).
    """
    settings = Settings(local=LocalSettings(launch=False))
    names = list(experts or [e.name for e in catalog.experts])
    per_example: list[dict[str, float]] = [{} for _ in examples]
    latency: dict[str, list[float]] = defaultdict(list)
    tokens: dict[str, list[tuple[int, int]]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    gate = asyncio.Semaphore(concurrency)
    async with ExpertPool(catalog, settings, Metrics(), transport=transport) as pool:
        await pool.check_all()

        async def one(i: int, name: str, bar: tqdm[Any]) -> None:
            client = pool.get(name)
            assert client is not None
            body = {
                "model": client.spec.served_model_name,
                "temperature": 0,
                "max_tokens": min(max_tokens, int(examples[i].extra.get("max_tokens", max_tokens))),
                "messages": [{"role": "user", "content": examples[i].prompt}],
            }
            async with gate:
                start = time.perf_counter()
                try:
                    result, _ = await client.complete(body)
                except CoEError:
                    errors[name] += 1
                    bar.update()
                    return
                latency[name].append(time.perf_counter() - start)
            usage = result.get("usage") or {}
            tokens[name].append(
                (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            )
            text = str(result["choices"][0]["message"].get("content") or "")
            if responses is not None:
                responses[i][name] = text
            got = await asyncio.to_thread(score, examples[i], text)
            if got is not None:
                per_example[i][name] = got
            bar.update()

        for name in names:
            if pool.get(name) is None:
                raise ValueError(f"expert {name!r} is not in the catalog")
            with tqdm(total=len(examples), desc=f"profiling {name}", unit="req") as bar:
                await asyncio.gather(*(one(i, name, bar) for i in range(len(examples))))
    profiles = _aggregate(catalog, names, examples, per_example, latency, errors)
    for name in names:
        done = tokens.get(name) or [(0, 0)]
        profiles["experts"][name]["seconds_per_request"] = round(
            float(np.mean(latency[name] or [0.0])), 3
        )
        profiles["experts"][name]["prompt_tokens_per_request"] = round(
            float(np.mean([p for p, _ in done])), 1
        )
        profiles["experts"][name]["completion_tokens_per_request"] = round(
            float(np.mean([c for _, c in done])), 1
        )
    profiles["run"] = {"max_tokens": max_tokens, "concurrency": concurrency, "n": len(examples)}
    return profiles, per_example


def _aggregate(
    catalog: Catalog,
    names: Sequence[str],
    examples: Sequence[Example],
    per_example: Sequence[dict[str, float]],
    latency: dict[str, list[float]],
    errors: dict[str, int],
) -> dict[str, Any]:
    out: dict[str, Any] = {"experts": {}}
    for name in names:
        spec = catalog.expert(name)
        cats: dict[str, list[float]] = defaultdict(list)
        skills: dict[str, list[float]] = defaultdict(list)
        for ex, scores in zip(examples, per_example, strict=True):
            if name in scores:
                cats[ex.category].append(scores[name])
                for s in ex.skills:
                    skills[s].append(scores[name])
        out["experts"][name] = {
            "cost": spec.cost if spec else 1.0,
            "categories": {
                c: {"score": round(float(np.mean(v)), 4), "n": len(v)}
                for c, v in sorted(cats.items())
            },
            "skills": {
                s: {"score": round(float(np.mean(v)), 4), "n": len(v)}
                for s, v in sorted(skills.items())
            },
            "latency_ms_p50": percentile_ms(latency[name], 50),
            "latency_ms_p99": percentile_ms(latency[name], 99),
            "errors": errors.get(name, 0),
        }
    return out


def pilots(x: np.ndarray[Any, Any], per_example: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Per expert, the unit-norm centroid of the prompts on which it scored best (> 0)."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, scores in enumerate(per_example):
        if scores and max(scores.values()) > 0:
            best = max(scores.values())
            for name, s in scores.items():
                if s == best:
                    rows[name].append(i)
    out = {}
    for name, idx in rows.items():
        c = x[idx].mean(0)
        out[name] = (c / max(float(np.linalg.norm(c)), 1e-12))[None].astype(np.float32)
    return out


def write_scores(
    path: Path, examples: Sequence[Example], per_example: Sequence[dict[str, float]]
) -> None:
    """The labelled set again, each row with its ``scores`` per expert."""
    with path.open("w", encoding="utf-8") as out:
        for ex, scores in zip(examples, per_example, strict=True):
            row = ex.to_json()
            row["scores"] = scores
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def keep_other_experts(
    out: Path, examples: Sequence[Example], profiles: dict[str, Any], per_example: list[Any]
) -> tuple[dict[str, Any], list[Any]]:
    """``--keep``: the experts this run did not profile keep their results from the
    previous run in ``out`` (same data, same order), so one expert can be re-profiled."""
    if not (out / "profiles.json").is_file() or not (out / "scores.jsonl").is_file():
        raise ValueError(f"--keep: no earlier run in {out} (profiles.json and scores.jsonl)")
    old = json.loads((out / "profiles.json").read_text(encoding="utf-8"))
    rows, _ = read_jsonl(out / "scores.jsonl")
    if [r.prompt for r in rows] != [e.prompt for e in examples]:
        raise ValueError(f"--keep: {out}/scores.jsonl is not for the same data")
    fresh = set(profiles["experts"])
    merged = {k: v for k, v in old["experts"].items() if k not in fresh}
    profiles["experts"] = {**merged, **profiles["experts"]}
    earlier = old.get("runs") or ([old["run"]] if old.get("run") else [])
    profiles["runs"] = [*earlier, profiles.pop("run")]
    kept = [
        {**{k: v for k, v in r.scores.items() if k not in fresh}, **now}
        for r, now in zip(rows, per_example, strict=True)
    ]
    return profiles, kept
