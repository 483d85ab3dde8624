"""Admin routes: always behind the admin key. Everything that changes state lives here."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request

from coe_router.errors import InvalidRequest, ModelNotFound
from coe_router.experts.scheduler import TierScheduler
from coe_router.gateway.auth import require_admin
from coe_router.gateway.state import gateway_state

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


@router.get("/experts")
async def experts(request: Request) -> dict[str, Any]:
    """Every expert: replicas, launched process, and (tiered pool) tier, load and wake stats."""
    pool = gateway_state(request).pool
    out = pool.readiness()
    for name, proc in pool.processes.items():
        out[name]["process"] = {
            "state": proc.state,
            "detail": proc.detail,
            "pid": proc.pid,
            "log": str(proc.log_path),
            "ready_after_s": proc.ready_after_s,
        }
    if pool.tiers is not None:
        now = time.monotonic()
        for name, e in pool.tiers.experts.items():
            out[name]["tiering"] = {
                "tier": e.tier.value,
                "transition": e.transition,
                "draining": e.draining,
                "pinned": e.pinned,
                "device": e.device,
                "memory_gb": e.memory_gb,
                "in_flight": e.in_flight,
                "waiting": len(e.waiters),
                "last_used_s_ago": None if math.isinf(e.last_used) else round(now - e.last_used, 3),
                "uses": e.uses,
                "wakes": e.wakes,
                "sleeps": e.sleeps,
                "wake_failures": e.wake_failures,
                "wake_s": {t.value: round(s, 3) for t, s in e.wake_s.items()},
                "last_error": e.last_error or None,
            }
    budgets = (
        {d: {"budget_gb": b, "used_gb": pool.tiers.used_gb(d)}
         for d, b in pool.tiers.budgets_gb.items()}
        if pool.tiers is not None else {}
    )  # fmt: skip
    return {"object": "list", "data": [{"name": n, **e} for n, e in out.items()],
            "devices": budgets}  # fmt: skip


def _tiers(request: Request, name: str) -> TierScheduler:
    tiers = gateway_state(request).pool.tiers
    if tiers is None:
        raise InvalidRequest("The tiered pool is off (set COE_TIERS__ENABLED=true).",
                             code="tiering_disabled")  # fmt: skip
    if name not in tiers.experts:
        raise ModelNotFound(f"No tiered expert named '{name}'.", param="name")
    return tiers


@router.post("/experts/{name}/{action}")
async def expert_action(
    request: Request, name: str, action: Literal["wake", "sleep", "pin", "unpin"]
) -> dict[str, Any]:
    """Wake, sleep, pin or unpin one expert; waits until a wake or sleep has finished."""
    tiers = _tiers(request, name)
    if action == "wake":
        await tiers.wake(name)
    elif action == "sleep":
        await tiers.sleep(name)
    else:
        tiers.pin(name, action == "pin")
    e = tiers.experts[name]
    return {"name": name, "tier": e.tier.value, "pinned": e.pinned}
