"""Admin routes: always behind the admin key. Everything that changes state lives here."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request

from coe_router.errors import InvalidRequest, ModelNotFound
from coe_router.experts.tiering.scheduler import TierScheduler
from coe_router.gateway.auth import require_admin
from coe_router.gateway.context import app_context

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


@router.get("/experts")
async def experts(request: Request) -> dict[str, Any]:
    """Every expert: replicas, launched process, and (tiered pool) tier, load and wake stats."""
    pool = app_context(request).pool
    out = pool.readiness()
    for name, proc in pool.processes.items():
        out[name]["process"] = proc.describe()
    if pool.scheduler is not None:
        now = time.monotonic()
        for name, e in pool.scheduler.experts.items():
            out[name]["tiering"] = e.describe(now)
    budgets = (
        {d: {"budget_gb": b, "used_gb": pool.scheduler.used_gb(d)}
         for d, b in pool.scheduler.budgets_gb.items()}
        if pool.scheduler is not None else {}
    )  # fmt: skip
    return {"object": "list", "data": [{"name": n, **e} for n, e in out.items()],
            "devices": budgets}  # fmt: skip


def _tiers(request: Request, name: str) -> TierScheduler:
    tiers = app_context(request).pool.scheduler
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
