"""The order launched experts start in: the generalist first, the others once it is up.

The generalist answers every routed request while the others load (cross-expert fallback,
marked ``x-coe-fallback``), so nothing else is prepared or started before it: the first
answer comes as soon as one expert could give it. The others then load in the background.
(On 2 CPU cores a second vLLM loading beside it cost the generalist little, but preparing
the code model's checkpoint first would have delayed it by over a minute:
``bench/first_answer.py``.)

Each process is first prepared when its checkpoint is missing and ``coe-router models
prepare`` knows its model (:meth:`LocalProcess.prepare`), then started. Every process is
``queued`` from the moment the pool opens, so its replica reads as starting (and the
health loop polls fast) rather than down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from coe_router.experts.process import LocalProcess

log = logging.getLogger("coe_router.experts")


def launch_waves(
    processes: Mapping[str, LocalProcess], generalist: str, *, generalist_first: bool
) -> list[list[LocalProcess]]:
    """The processes in the groups they start in, one group after the other is up."""
    first = processes.get(generalist)
    if not generalist_first or first is None or len(processes) < 2:
        return [list(processes.values())] if processes else []
    return [[first], [p for name, p in processes.items() if name != generalist]]


def queue_waves(waves: list[list[LocalProcess]]) -> None:
    """Mark every process as waiting for its turn (before :func:`launch` runs)."""
    for i, wave in enumerate(waves):
        before = ", ".join(repr(p.expert) for p in waves[i - 1]) if i else ""
        for p in wave:
            p.queue(f"queued: starts once {before} is up" if before else "queued")


async def launch(waves: list[list[LocalProcess]], wave_timeout_s: float) -> None:
    """Prepare and start each wave's processes; wait until a wave is up (ready, or failed
    for good) before the next one, or ``wave_timeout_s`` at most.

    Runs as a background task, so nothing may escape it: a process whose preparation or
    start raises is marked failed (its replica reads as down, the log says why), and the
    next wave still starts.
    """
    for i, wave in enumerate(waves):
        for p in wave:
            try:
                await p.prepare()
                if p.state != "failed":
                    await p.start()
            except Exception as exc:  # an OSError spawning it, a full disk, ...
                p.fail(f"could not start: {type(exc).__name__}: {exc}")
        if i + 1 < len(waves):
            settled = asyncio.gather(*(p.settled() for p in wave))
            try:
                async with asyncio.timeout(wave_timeout_s):
                    await settled
            except TimeoutError:
                log.warning(
                    "%s not up after %.0f s: starting the next experts anyway",
                    ", ".join(repr(p.expert) for p in wave),
                    wave_timeout_s,
                )
            log.info(
                "%s: starting %s; until they are up, their routed requests are answered by "
                "the generalist (header x-coe-fallback)",
                ", ".join(f"expert {p.expert!r} {p.state}" for p in wave),
                ", ".join(repr(p.expert) for p in waves[i + 1]),
            )
