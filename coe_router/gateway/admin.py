"""Admin routes: always behind the admin key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from coe_router.gateway.auth import require_admin
from coe_router.gateway.state import gateway_state

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


@router.get("/experts")
async def experts(request: Request) -> dict[str, Any]:
    """Every expert: replicas (state, breaker, load) and launched processes (pid, log)."""
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
    return {"object": "list", "data": [{"name": n, **e} for n, e in out.items()]}
