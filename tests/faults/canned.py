"""Helpers for the client-side fault tests: the real gateway over the canned upstream
(``canned_upstream.py``), started per test or per module (fixtures in ``conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support import HOST, GatewayProcess, launch_gateway

#: An expert of a test catalog: (name, the served model name that picks the canned
#: behaviour), and optionally its replica's URL (default: the canned upstream).
Expert = tuple[str, str] | tuple[str, str, str]
StartGateway = Callable[..., GatewayProcess]


def catalog(upstream: str, experts: Sequence[Expert]) -> dict[str, Any]:
    """A catalog of ``experts`` on ``upstream``; the first is the generalist."""
    return {
        "experts": [
            {"name": e[0], "served_model_name": e[1], "generalist": i == 0,
             "categories": ["general"] if i == 0 else [e[0]],
             "replicas": [e[2] if len(e) > 2 else upstream]}
            for i, e in enumerate(experts)
        ],
        "virtual_models": [{"name": "coe", "router": "keyword"}],
        "keywords": {e[0]: [e[0]] for e in experts[1:]},
    }  # fmt: skip


class Launcher:
    """Starts gateways over the canned upstream in ``workdir``; stops them all at the end."""

    def __init__(self, workdir: Path, upstream: str) -> None:
        self.workdir, self.upstream = workdir, upstream
        self.started: list[GatewayProcess] = []

    def __call__(
        self,
        experts: Sequence[Expert] = (("general", "general"),),
        env: Mapping[str, str] | None = None,
    ) -> GatewayProcess:
        """A gateway with ``experts`` and the ``COE_*`` settings in ``env``."""
        gw = launch_gateway(
            self.workdir / f"gateway-{len(self.started)}", catalog(self.upstream, experts),
            env=dict(env or {}), args=["--no-launch"], ready_path="/health", timeout_s=60,
            keep_coe_env=False,
        )  # fmt: skip
        self.started.append(gw)
        return gw

    def stop_all(self) -> None:
        for gw in self.started:
            gw.stop(10)


def log_of(gw: GatewayProcess) -> str:
    """The gateway's whole log so far."""
    return gw.log_path.read_text(errors="replace")


__all__ = ["HOST", "Expert", "Launcher", "StartGateway", "catalog", "log_of"]
