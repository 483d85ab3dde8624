"""The order launched experts start in, and which missing checkpoints the gateway prepares."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from coe_router.catalog import LaunchSpec
from coe_router.config import LocalSettings
from coe_router.experts.launch import launch, launch_waves, queue_waves
from coe_router.experts.process import LocalProcess
from coe_router.modelprep.prepare import MARKER_FORMAT, MARKER_NAME
from coe_router.modelprep.sources import KNOWN_MODELS

KNOWN = next(iter(KNOWN_MODELS))


def _process(name: str, tmp: Path, model: str = KNOWN, **settings: Any) -> LocalProcess:
    local = LocalSettings(models_dir=tmp / "models", run_dir=tmp / "run", **settings)
    return LocalProcess(name, LaunchSpec(model=model, port=8101), name, local)


def test_the_generalist_starts_alone_then_the_others(tmp_path: Path) -> None:
    procs = {n: _process(n, tmp_path) for n in ["code", "general", "math"]}
    waves = launch_waves(procs, "general", generalist_first=True)
    assert [[p.expert for p in w] for w in waves] == [["general"], ["code", "math"]]
    queue_waves(waves)
    assert procs["general"].state == "queued"
    assert procs["code"].detail == "queued: starts once 'general' is up"
    assert procs["code"].progress() == procs["code"].detail


def test_all_at_once_when_asked_or_when_the_generalist_is_not_launched(tmp_path: Path) -> None:
    procs = {n: _process(n, tmp_path) for n in ["code", "general"]}
    together = launch_waves(procs, "general", generalist_first=False)
    assert [[p.expert for p in w] for w in together] == [["code", "general"]]
    remote = launch_waves({"code": procs["code"]}, "general", generalist_first=True)
    assert [[p.expert for p in w] for w in remote] == [["code"]]
    assert launch_waves({}, "general", generalist_first=True) == []


def test_only_a_missing_checkpoint_of_a_known_model_is_prepared(tmp_path: Path) -> None:
    assert _process("general", tmp_path).preparable() == KNOWN
    assert _process("general", tmp_path, prepare=False).preparable() is None
    assert _process("general", tmp_path, model="no-such-model").preparable() is None
    # An explicit path is the operator's checkpoint, even when its name is a known one.
    elsewhere = tmp_path / "elsewhere" / KNOWN
    elsewhere.mkdir(parents=True)
    assert _process("general", tmp_path, model=str(elsewhere)).preparable() is None
    done = tmp_path / "models" / KNOWN
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    # A config.json alone is a preparation cut short (the marker is written last).
    assert _process("general", tmp_path).preparable() == KNOWN
    marker = {"format": MARKER_FORMAT, "gguf_sha256": KNOWN_MODELS[KNOWN].gguf_sha256}
    (done / MARKER_NAME).write_text(json.dumps(marker))
    assert _process("general", tmp_path).preparable() is None
    (done / MARKER_NAME).write_text(json.dumps({**marker, "format": "an older one"}))
    assert _process("general", tmp_path).preparable() == KNOWN


def _ready_checkpoint(tmp: Path, model: str) -> None:
    """A prepared checkpoint, as far as the gateway checks: config and marker."""
    (tmp / "models" / model).mkdir(parents=True)
    (tmp / "models" / model / "config.json").write_text("{}")
    marker = {"format": MARKER_FORMAT, "gguf_sha256": KNOWN_MODELS[model].gguf_sha256}
    (tmp / "models" / model / MARKER_NAME).write_text(json.dumps(marker))


async def test_a_start_that_raises_fails_that_expert_and_the_next_wave_still_starts(
    tmp_path: Path,
) -> None:
    _ready_checkpoint(tmp_path, KNOWN)
    broken = _process("general", tmp_path, python=str(tmp_path / "no-such-python"))
    other = _process("code", tmp_path, model="not-prepared-here", prepare=False)
    waves = launch_waves({"code": other, "general": broken}, "general", generalist_first=True)
    queue_waves(waves)
    await launch(waves, wave_timeout_s=5)  # raises nothing: it runs as a background task
    assert broken.state == "failed"
    assert "could not start" in broken.detail
    # The second wave was reached (and fails for its own reason).
    assert other.state == "failed"
    assert "no checkpoint" in other.detail


async def test_stopping_a_queued_expert_leaves_it_stopped(tmp_path: Path) -> None:
    waiting = _process("code", tmp_path)
    waiting.queue("queued: starts once 'general' is up")
    await waiting.stop()
    assert waiting.state == "stopped"


async def test_a_wave_that_never_settles_holds_the_next_back_only_until_the_timeout(
    tmp_path: Path,
) -> None:
    hung = _process("general", tmp_path)
    nxt = _process("code", tmp_path, model="not-prepared-here", prepare=False)

    async def nothing() -> None:
        return None

    hung.prepare = nothing  # type: ignore[method-assign]
    hung.start = nothing  # type: ignore[method-assign]
    hung.state = "starting"  # as if its server never answered /health nor exited
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(launch([[hung], [nxt]], wave_timeout_s=0.3), timeout=5)
    assert 0.3 <= loop.time() - started < 5
    assert nxt.state == "failed"  # reached after the timeout: it has no checkpoint
