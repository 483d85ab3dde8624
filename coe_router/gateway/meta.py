"""Discovery and operations: ``/v1/models``, ``/health``, ``/ready``, ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from coe_router.errors import error_body
from coe_router.gateway.auth import is_admin, require_api_key
from coe_router.gateway.context import app_context
from coe_router.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", dependencies=[Depends(require_api_key)])
async def list_models(request: Request) -> ModelList:
    """Virtual models first (routed), then every expert (callable by name)."""
    state = app_context(request)
    cards = [
        ModelCard(id=v.name, coe={"kind": "virtual", "router": v.router,
                                  "description": v.description})
        for v in state.catalog.virtual_models
    ]  # fmt: skip
    for spec in state.catalog.experts:
        client = state.pool.get(spec.name)
        cards.append(
            ModelCard(
                id=spec.name,
                coe={
                    "kind": "expert",
                    "served_model_name": spec.served_model_name,
                    "categories": spec.categories,
                    "cost": spec.cost,
                    "memory_gb": spec.memory_gb,
                    "live": bool(client and client.live),
                },
            )
        )
    return ModelList(data=cards)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the gateway process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: every required expert has a live replica, and the gateway is not draining.

    Each expert is ``ready`` or ``not ready``; replica URLs, states and breakers only with
    the admin key (they map the deployment for whoever asks).
    """
    pool = app_context(request).pool
    detail = pool.readiness()
    experts: dict[str, Any] = (
        detail if is_admin(request)
        else {n: "ready" if e["live"] else "not ready" for n, e in detail.items()}
    )  # fmt: skip
    if request.app.state.drain.draining:
        body = error_body("Not ready: the gateway is shutting down.", "service_unavailable",
                          None, "draining")  # fmt: skip
        return JSONResponse({**body, "experts": experts}, status_code=503)
    if pool.ready:
        return JSONResponse({"status": "ready", "experts": experts})
    missing = [n for n, e in detail.items() if e["required"] and not e["live"]]
    body = error_body(
        f"Not ready: no live replica for {', '.join(missing)}.",
        "service_unavailable", None, "not_ready",
    )  # fmt: skip
    return JSONResponse({**body, "experts": experts}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(app_context(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
