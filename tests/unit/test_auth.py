"""Bearer keys: optional for inference, always the admin key for ``/admin``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.fakes import FakeVLLM
from tests.unit.conftest import openai_error

CHAT = "/v1/chat/completions"
BODY = {"model": "coe", "messages": [{"role": "user", "content": "hi"}]}
KEYS = {"api_keys": ["k1", "k2"], "admin_key": "adm"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
async def keyed(make_client: Callable[..., Any]) -> httpx.AsyncClient:
    """A gateway with two API keys and an admin key."""
    client: httpx.AsyncClient = await make_client(auth=KEYS)
    return client


# --- inference routes --------------------------------------------------------------------------


async def test_no_key_is_a_401(keyed: httpx.AsyncClient, fake: FakeVLLM) -> None:
    error = openai_error(await keyed.post(CHAT, json=BODY), 401)
    assert error["type"] == "authentication_error"
    assert error["code"] == "missing_api_key"
    assert "Bearer" in error["message"]
    assert fake.received == []


@pytest.mark.parametrize(
    "header",
    [
        "Bearer nope",
        "Bearer k1x",
        "Bearer k",
        "Bearer K1",  # keys are case-sensitive
        "Bearer adm2",
    ],
)
async def test_wrong_key_is_a_401(keyed: httpx.AsyncClient, fake: FakeVLLM, header: str) -> None:
    resp = await keyed.post(CHAT, json=BODY, headers={"authorization": header})
    error = openai_error(resp, 401)
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert "nope" not in error["message"]  # the key is not echoed back
    assert fake.received == []


@pytest.mark.parametrize("header", ["k1", "Basic k1", "Bearer", "Bearer   ", "Token k1"])
async def test_malformed_authorization_counts_as_no_key(
    keyed: httpx.AsyncClient, header: str
) -> None:
    resp = await keyed.post(CHAT, json=BODY, headers={"authorization": header})
    assert openai_error(resp, 401)["code"] == "missing_api_key"


@pytest.mark.parametrize("header", ["Bearer k1", "Bearer k2", "bearer k1", "BEARER  k2 "])
async def test_any_api_key_is_accepted(
    keyed: httpx.AsyncClient, fake: FakeVLLM, header: str
) -> None:
    resp = await keyed.post(CHAT, json=BODY, headers={"authorization": header})
    assert resp.status_code == 200, resp.text
    assert len(fake.received) == 1
    # The client's key is for the gateway; it is not forwarded to the expert.
    assert "authorization" not in fake.received[0].body


async def test_admin_key_also_works_for_inference(keyed: httpx.AsyncClient) -> None:
    resp = await keyed.post(CHAT, json=BODY, headers=bearer("adm"))
    assert resp.status_code == 200, resp.text


async def test_keys_guard_route_and_models_too(keyed: httpx.AsyncClient, fake: FakeVLLM) -> None:
    openai_error(await keyed.post("/v1/route", json=BODY), 401)
    openai_error(await keyed.get("/v1/models"), 401)
    openai_error(await keyed.get("/v1/models", headers=bearer("wrong")), 401)
    assert (await keyed.post("/v1/route", json=BODY, headers=bearer("k2"))).status_code == 200
    assert (await keyed.get("/v1/models", headers=bearer("k1"))).status_code == 200


async def test_auth_is_checked_before_the_body(keyed: httpx.AsyncClient) -> None:
    # An unauthenticated client learns nothing about what a valid body looks like.
    resp = await keyed.post(CHAT, content=b"not json")
    assert openai_error(resp, 401)["type"] == "authentication_error"


async def test_without_api_keys_inference_is_open(make_client: Callable[..., Any]) -> None:
    client = await make_client(auth={"admin_key": "adm"})
    assert (await client.post(CHAT, json=BODY)).status_code == 200
    assert (await client.post(CHAT, json=BODY, headers=bearer("anything"))).status_code == 200
    assert (await client.get("/v1/models")).status_code == 200


# --- admin routes ------------------------------------------------------------------------------


async def test_admin_needs_a_token(keyed: httpx.AsyncClient) -> None:
    error = openai_error(await keyed.get("/admin/experts"), 401)
    assert error["type"] == "authentication_error"
    assert error["code"] == "missing_api_key"


async def test_admin_refuses_a_normal_api_key(keyed: httpx.AsyncClient) -> None:
    error = openai_error(await keyed.get("/admin/experts", headers=bearer("k1")), 403)
    assert error["type"] == "permission_error"
    assert error["code"] == "insufficient_permissions"


@pytest.mark.parametrize("token", ["ad", "admx", "ADM", "k2"])
async def test_admin_refuses_a_wrong_key(keyed: httpx.AsyncClient, token: str) -> None:
    error = openai_error(await keyed.get("/admin/experts", headers=bearer(token)), 403)
    assert error["type"] == "permission_error"


async def test_admin_key_lists_every_expert(keyed: httpx.AsyncClient) -> None:
    resp = await keyed.get("/admin/experts", headers=bearer("adm"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list"
    by_name = {e["name"]: e for e in body["data"]}
    assert set(by_name) == {"general", "code"}
    assert [r["url"] for r in by_name["general"]["replicas"]] == [
        "http://general-a:8000",
        "http://general-b:8000",
    ]
    assert by_name["code"]["replicas"][0]["state"] == "up"
    assert by_name["code"]["replicas"][0]["breaker"] == "closed"
    assert "process" not in by_name["code"]  # not launched by the gateway


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        ({}, None),
        ({}, "Bearer adm"),
        ({"api_keys": ["k1"]}, "Bearer k1"),
    ],
    ids=["open-no-token", "open-with-token", "keys-no-admin"],
)
async def test_admin_is_disabled_without_an_admin_key(
    make_client: Callable[..., Any], auth: dict[str, Any], header: str | None
) -> None:
    # Even a gateway with open inference never opens /admin.
    client = await make_client(auth=auth)
    headers = {"authorization": header} if header else {}
    error = openai_error(await client.get("/admin/experts", headers=headers), 403)
    assert error["code"] == "admin_disabled"


# --- operations routes -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
async def test_operations_routes_need_no_key(keyed: httpx.AsyncClient, path: str) -> None:
    resp = await keyed.get(path)
    assert resp.status_code == 200, resp.text
    # A wrong key is not held against them either.
    assert (await keyed.get(path, headers=bearer("wrong"))).status_code == 200
