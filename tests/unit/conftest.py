"""Unit fixtures: a gateway app over the fake vLLM, driven in-process (no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from coe_router.config import Settings, UpstreamSettings
from coe_router.gateway import create_app
from tests.fakes import FakeVLLM
from tests.support import CODE, GENERAL, in_process_client, keyword_catalog

__all__ = ["CODE", "GENERAL", "app_of", "catalog_dict", "openai_error"]


def catalog_dict() -> dict[str, Any]:
    """Two experts over fake replicas: a generalist with two replicas and a coder."""
    return keyword_catalog()


@pytest.fixture
def fake() -> FakeVLLM:
    return FakeVLLM()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(catalog: dict[str, Any] | None = None, **overrides: Any) -> Settings:
        path = tmp_path / "catalog.yaml"
        path.write_text(yaml.safe_dump(catalog or catalog_dict()))
        upstream = UpstreamSettings(**overrides.pop("upstream", {}))
        return Settings(catalog=path, upstream=upstream, **overrides)

    return build


@pytest.fixture
async def make_client(
    fake: FakeVLLM, make_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Any]]:
    """Build an app (with optional settings overrides) and an httpx client bound to it."""
    async with AsyncExitStack() as stack:

        async def build(**overrides: Any) -> httpx.AsyncClient:
            app = create_app(make_settings(**overrides), upstream_transport=fake.transport())
            return await stack.enter_async_context(in_process_client(app))

        yield build


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> httpx.AsyncClient:
    c: httpx.AsyncClient = await make_client()
    return c


def app_of(client: httpx.AsyncClient) -> FastAPI:
    """The app behind a client from ``make_client``."""
    app: FastAPI = client.app  # type: ignore[attr-defined]
    return app


def openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    """Check that ``resp`` is an OpenAI-style error with ``status``; return its ``error``."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return dict(error)
