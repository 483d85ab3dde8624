"""How long a local vLLM CPU expert takes to start with a cold cache, and what it then serves.

The claim: for the small experts of the embedded catalog, ``--enforce-eager`` (no
torch.compile) starts several times faster from a cold cache than vLLM's default
compilation, at a throughput cost small enough to make it the right default for a first
run on a small CPU machine.

For each option set (``default``, ``eager``) and each model, in one run:

1. start ``python -m vllm.entrypoints.openai.api_server`` exactly as the gateway launches
   it (:class:`coe_router.experts.process.LocalProcess`'s arguments), with a fresh, empty
   ``VLLM_CACHE_ROOT`` and ``TORCHINDUCTOR_CACHE_DIR`` (a cold cache, as on a fresh machine);
2. time until ``GET /health`` answers 200 (start-up), then until a first chat completion
   returns (first answer);
3. measure decode throughput: ``--requests`` greedy completions of ``--max-tokens`` tokens
   one after another, completion tokens per second of wall time;
4. stop it (SIGTERM to its process group).

Prints a table and, with ``--json``, one JSON object as the last line of stdout. The
absolute numbers depend on the machine (and on whatever else runs on it); the ratios in
one run are the result.

Usage::

    python bench/expert_startup.py                          # both models, both options
    python bench/expert_startup.py --models smollm2-135m-instruct --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import HOST, free_port, log, models_dir, tail, wait_http

#: Option sets compared: extra vLLM arguments.
OPTIONS: dict[str, list[str]] = {"default": [], "eager": ["--enforce-eager"]}
MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
PROMPT = "Write a Python function that returns the n-th Fibonacci number."


@dataclass
class Result:
    """One start of one model with one option set."""

    model: str
    option: str
    startup_s: float
    first_answer_s: float
    tokens_per_s: float


def _chat(client: httpx.Client, url: str, model: str, max_tokens: int) -> int:
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "messages": [{"role": "user", "content": PROMPT}]}  # fmt: skip
    resp = client.post(f"{url}/v1/chat/completions", json=body)
    resp.raise_for_status()
    return int(resp.json()["usage"]["completion_tokens"])


def measure(model: str, option: str, args: argparse.Namespace) -> Result:
    """Start ``model`` with ``OPTIONS[option]`` on a cold cache; time it; stop it."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="coe-startup-") as tmp:
        cache = Path(tmp)
        env = {**os.environ, "VLLM_CACHE_ROOT": str(cache / "vllm"),
               "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
               "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(models_dir() / model), "--served-model-name", model,
               "--host", HOST, "--port", str(port), "--dtype", "float32",
               "--max-model-len", "2048", *OPTIONS[option]]  # fmt: skip
        logfile = cache / "vllm.log"
        started = time.monotonic()
        with logfile.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        try:
            wait_http(f"{url}/health", proc, args.timeout_s, lambda: tail(logfile, 30))
            startup = time.monotonic() - started
            with httpx.Client(timeout=httpx.Timeout(600.0, connect=5.0)) as client:
                _chat(client, url, model, 8)
                first = time.monotonic() - started
                t0, tokens = time.monotonic(), 0
                for _ in range(args.requests):
                    tokens += _chat(client, url, model, args.max_tokens)
                rate = tokens / (time.monotonic() - t0)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    return Result(model, option, round(startup, 1), round(first, 1), round(rate, 2))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--options", default=",".join(OPTIONS))
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout-s", type=float, default=1200.0)
    p.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = p.parse_args()
    results: list[Result] = []
    for model in args.models.split(","):
        for option in args.options.split(","):
            log(f"{model} / {option}: starting with a cold cache")
            results.append(measure(model, option, args))
            log(f"  {results[-1]}")
    print(f"{'model':32} {'option':8} {'start s':>8} {'first answer s':>15} {'tok/s':>7}")
    for r in results:
        print(f"{r.model:32} {r.option:8} {r.startup_s:8.1f} {r.first_answer_s:15.1f} "
              f"{r.tokens_per_s:7.2f}")  # fmt: skip
    ratios = {}
    for model in args.models.split(","):
        by = {r.option: r for r in results if r.model == model}
        if "default" in by and "eager" in by:
            ratios[model] = {
                "startup_speedup": round(by["default"].startup_s / by["eager"].startup_s, 2),
                "throughput_ratio": round(by["eager"].tokens_per_s / by["default"].tokens_per_s, 3),
            }
            r = ratios[model]
            print(f"{model}: eager starts {r['startup_speedup']}x faster, at "
                  f"{r['throughput_ratio']:.0%} of the default's decode rate")  # fmt: skip
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "ratios": ratios,
                          "cpus": os.cpu_count()}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
