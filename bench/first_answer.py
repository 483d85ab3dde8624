"""Clone to first answer: how long a fresh ``git clone`` + ``make run`` takes to answer a chat.

The claim (issue 13): on a fresh machine of this kind (2 shared CPU cores, no GPU) and
without a warm cache, ``make run`` answers its first chat request within 6 minutes.

For each path measured (this commit; with ``--baseline REF`` also the ``make run`` of an
earlier commit, in the same invocation, one after the other):

1. ``git clone`` this repository into a temporary directory and check out the commit;
2. run ``make run`` there in its own process group, with cold caches: a new ``.venv/``
   and ``.models/`` (the clone has none), pip's cache off (``PIP_NO_CACHE_DIR=1``), and
   empty vLLM, torch inductor, Triton, Hugging Face and XDG cache directories and run
   directory (no start-up estimate from an earlier run);
3. every half second, note when each phase is over: the install (a ``.venv/.installed*``
   stamp appears), the generalist's checkpoint (its ``.coe-prepared.json`` marker), the
   gateway listening (``GET /health``), the first launched expert ready (its
   ``<run_dir>/<expert>.startup`` record), and the first answer: a ``coe`` (routed) chat
   completion that returns 200;
4. with ``--wait-all``, also wait until ``GET /ready`` answers 200 (every expert up);
5. stop it all: SIGTERM to ``make``'s process group (the gateway stops the experts it
   launched), SIGKILL to anything left of it or of the experts' groups; delete the clone.

Seconds are counted from the start of ``git clone``. Prints a table and, with ``--json``,
one JSON object as the last line of stdout. What "cold" does not cover: the machine's own
package sources stay as they are (pip's configured indexes and find-links, for example a
local CPU torch wheel), and the OS page cache may hold files an earlier run read.

Usage::

    python bench/first_answer.py                          # this commit (~5 min)
    python bench/first_answer.py --baseline 4274255 --json  # and the earlier make run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import HOST, ROOT, free_port, group_alive, log, tail

#: The embedded catalog's generalist model and its launched experts' fixed ports.
GENERALIST_MODEL = "smollm2-135m-instruct"
EXPERT_PORTS = (8101, 8102)
PROMPT = "Say hello in one short sentence."
PHASES = ("install", "generalist_checkpoint", "gateway_up", "first_expert_up", "first_answer")


@dataclass
class Run:
    """One clone + ``make run``: seconds from the clone's start to the end of each phase."""

    path: str
    commit: str
    phases: dict[str, float | None] = field(default_factory=dict)
    all_up_s: float | None = None
    answered_by: str | None = None
    fallback: str | None = None


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def _cold_env(tmp: Path, port: int) -> dict[str, str]:
    """This environment, minus our own settings, with every cache pointed at empty dirs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COE_", "VIRTUAL_ENV", "PYTHONPATH"))}  # fmt: skip
    caches = tmp / "caches"
    return env | {
        "PIP_NO_CACHE_DIR": "1",
        "VLLM_CACHE_ROOT": str(caches / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
        "TRITON_CACHE_DIR": str(caches / "triton"),
        "HF_HOME": str(caches / "hf"),
        "XDG_CACHE_HOME": str(caches / "xdg"),
        "COE_LOCAL__RUN_DIR": str(tmp / "run"),
        "COE_SERVER__HOST": HOST,
        "COE_SERVER__PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }


def _stop(make: subprocess.Popen[bytes], run_dir: Path) -> None:
    """SIGTERM ``make``'s group; then SIGKILL whatever is left of it and of the experts."""
    expert_groups = set()
    for pid_file in run_dir.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            expert_groups.add(int(pid_file.read_text()))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(make.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        make.wait(60)
    deadline = time.monotonic() + 30  # the gateway stops its experts on SIGTERM
    while time.monotonic() < deadline and any(group_alive(g) for g in expert_groups):
        time.sleep(0.5)
    for group in [make.pid, *expert_groups]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    if make.poll() is None:
        make.wait()


def measure(label: str, commit: str, args: argparse.Namespace) -> Run:
    """Clone ``commit``, ``make run`` it cold, time its phases; stop it and delete it."""
    run = Run(label, commit, dict.fromkeys(PHASES))
    port = free_port()
    url = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="coe-first-answer-", dir=args.workdir) as tmp_s:
        tmp = Path(tmp_s)
        clone, run_dir, make_log = tmp / "clone", tmp / "run", tmp / "make.log"
        started = time.monotonic()
        _git("clone", "-q", "--no-checkout", str(ROOT), str(clone))
        _git("checkout", "-q", commit, cwd=clone)
        marker = clone / ".models" / GENERALIST_MODEL / ".coe-prepared.json"
        with make_log.open("wb") as out:
            make = subprocess.Popen(["make", "run"], cwd=clone, stdout=out,
                                    stderr=subprocess.STDOUT, env=_cold_env(tmp, port),
                                    start_new_session=True)  # fmt: skip
        p = run.phases
        try:
            with httpx.Client(timeout=httpx.Timeout(args.request_timeout_s, connect=2.0)) as c:
                while p["first_answer"] is None or (args.wait_all and run.all_up_s is None):
                    now = round(time.monotonic() - started, 1)
                    if now > args.timeout_s:
                        raise TimeoutError(f"{label}: not done after {args.timeout_s:.0f} s")
                    if make.poll() is not None:
                        raise RuntimeError(f"{label}: make exited with {make.returncode}")
                    if p["install"] is None and any((clone / ".venv").glob(".installed*")):
                        p["install"] = now
                        log(f"  {now:6.1f} s  installed")
                    if p["generalist_checkpoint"] is None and marker.exists():
                        p["generalist_checkpoint"] = now
                        log(f"  {now:6.1f} s  generalist checkpoint prepared")
                    if p["first_expert_up"] is None and any(run_dir.glob("*.startup")):
                        p["first_expert_up"] = now
                        log(f"  {now:6.1f} s  first expert up")
                    if p["install"] is not None:
                        _poll_gateway(c, url, run, started, args.wait_all)
                    time.sleep(0.5)
        except BaseException:
            log(f"--- {make_log}\n{tail(make_log, 40)}")
            raise
        finally:
            _stop(make, run_dir)
    return run


def _poll_gateway(client: httpx.Client, url: str, run: Run, started: float, wait_all: bool) -> None:
    """One round of the gateway's phases: listening, first answer, every expert up."""
    p = run.phases
    now = round(time.monotonic() - started, 1)
    with contextlib.suppress(httpx.HTTPError):
        if p["gateway_up"] is None:
            if client.get(f"{url}/health").status_code != 200:
                return
            p["gateway_up"] = now
            log(f"  {now:6.1f} s  gateway listening")
        if p["first_answer"] is None:
            body = {"model": "coe", "max_tokens": 16, "temperature": 0,
                    "messages": [{"role": "user", "content": PROMPT}]}  # fmt: skip
            resp = client.post(f"{url}/v1/chat/completions", json=body)
            if resp.status_code == 200:
                p["first_answer"] = round(time.monotonic() - started, 1)
                run.answered_by = resp.headers.get("x-coe-expert")
                run.fallback = resp.headers.get("x-coe-fallback")
                log(f"  {p['first_answer']:6.1f} s  first answer ({run.answered_by})")
        if wait_all and run.all_up_s is None and client.get(f"{url}/ready").status_code == 200:
            run.all_up_s = now
            log(f"  {now:6.1f} s  every expert up")


def _ports_busy() -> list[int]:
    """The catalog's expert ports that something answers on already."""
    busy = []
    for port in EXPERT_PORTS:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"http://{HOST}:{port}/health", timeout=httpx.Timeout(1.0))
            busy.append(port)
    return busy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--baseline", metavar="REF", help="also measure make run at this commit")
    p.add_argument("--baseline-first", action="store_true", help="measure the baseline first")
    p.add_argument("--wait-all", action="store_true", help="also wait until every expert is up")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="per path")
    p.add_argument("--request-timeout-s", type=float, default=120.0)
    p.add_argument("--workdir", default=None, help="where the clones go (default: $TMPDIR)")
    p.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = p.parse_args()
    busy = _ports_busy()
    if busy:
        log(f"ports {busy} answer already: deploy/local.yaml's experts need them free")
        return 2
    if _git("status", "--porcelain", "--untracked-files=no"):
        log("note: uncommitted changes are not measured (the clone is of the commit)")
    paths = [("this commit", _git("rev-parse", "HEAD"))]
    if args.baseline:
        base = ("baseline", _git("rev-parse", args.baseline))
        paths = [base, *paths] if args.baseline_first else [*paths, base]
    runs = []
    for label, commit in paths:
        log(f"{label} ({commit[:10]}): git clone + make run, cold")
        runs.append(measure(label, commit, args))
    _report(runs, args)
    return 0


def _report(runs: list[Run], args: argparse.Namespace) -> None:
    heads = ["install", "generalist ckpt", "gateway up", "1st expert up", "first answer"]
    print(f"{'path':12} {'commit':10} " + " ".join(f"{h:>15}" for h in heads)
          + (f" {'all up':>8}" if args.wait_all else ""))  # fmt: skip
    for r in runs:
        cells = " ".join(f"{r.phases[k]:15.1f}" if r.phases[k] is not None else f"{'-':>15}"
                         for k in PHASES)  # fmt: skip
        extra = f" {r.all_up_s:8.1f}" if args.wait_all and r.all_up_s is not None else ""
        print(f"{r.path:12} {r.commit[:10]:10} {cells}{extra}")
    for r in runs:
        answer = r.phases["first_answer"]
        verdict = "within" if answer is not None and answer <= 360 else "over"
        fallback = f", fallback {r.fallback}" if r.fallback else ""
        print(f"{r.path}: first answer {answer} s after git clone ({verdict} 6 minutes), "
              f"answered by {r.answered_by}{fallback}")  # fmt: skip
    if args.json:
        print(json.dumps({"runs": [asdict(r) for r in runs], "cpus": os.cpu_count(),
                          "target_s": 360}))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
