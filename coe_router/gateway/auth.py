"""API keys: optional for inference, always required for admin routes.

A key comes as ``Authorization: Bearer <key>`` (OpenAI's clients) or ``x-api-key: <key>``
(Anthropic's); the bearer token wins when both are sent.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from coe_router.errors import AuthenticationError, PermissionDenied
from coe_router.gateway.client_address import client_address
from coe_router.gateway.context import app_context
from coe_router.shared.ratelimit import ANONYMOUS, key_id


def _api_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip() or None


def _matches(token: str, secret: str) -> bool:
    return hmac.compare_digest(token.encode(), secret.encode())


async def require_api_key(request: Request) -> None:
    """Inference routes: open when no keys are configured, else any API key or the admin key."""
    auth = app_context(request).settings.auth
    if not auth.api_keys:
        return
    token = _api_key(request)
    if token is None:
        raise AuthenticationError(
            "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
            code="missing_api_key",
        )
    secrets = [k.get_secret_value() for k in auth.api_keys]
    if auth.admin_key is not None:
        secrets.append(auth.admin_key.get_secret_value())
    # Compare against every key so timing does not reveal which one is closest.
    if not any([_matches(token, s) for s in secrets]):
        raise AuthenticationError("Incorrect API key provided.")


async def require_admin(request: Request) -> None:
    """Admin routes: the admin key, always; disabled when none is configured."""
    admin = app_context(request).settings.auth.admin_key
    if admin is None:
        raise PermissionDenied(
            "The admin API is disabled: set COE_AUTH__ADMIN_KEY to enable it.",
            code="admin_disabled",
        )
    token = _api_key(request)
    if token is None:
        raise AuthenticationError(
            "Missing admin key: send 'Authorization: Bearer <admin key>'.", code="missing_api_key"
        )
    if not _matches(token, admin.get_secret_value()):
        raise PermissionDenied("This route needs the admin key.")


def is_admin(request: Request) -> bool:
    """Whether the request carries the admin key (never raises)."""
    admin = app_context(request).settings.auth.admin_key
    token = _api_key(request)
    return admin is not None and token is not None and _matches(token, admin.get_secret_value())


def caller_id(request: Request) -> str:
    """Who is asking, for rate limits, the cache and affinity; never a secret.

    With API keys configured, the id of the request's key (checked by
    :func:`require_api_key`); without, ``ip:`` and the client's address: any bearer is
    accepted then, so a fresh random one per request must not be a fresh budget.
    """
    settings = app_context(request).settings
    if not settings.auth.api_keys:
        return "ip:" + client_address(request, settings.server.trusted_proxies)
    token = _api_key(request)
    return key_id(token) if token is not None else ANONYMOUS
