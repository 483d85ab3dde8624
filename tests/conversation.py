"""Chat bodies and conversations for tests that drive an in-process gateway.

Shared by the unit tests of the shared-state features and their Redis twins in
``tests/integration``: a request body, the next turn of a conversation, where a
response was routed, and waiting for the gateway's background writes.
"""

from __future__ import annotations

from typing import Any

import httpx

from coe_router.gateway.context import AppContext

Messages = list[dict[str, str]]


def chat(content: str | Messages, model: str = "coe", **extra: Any) -> dict[str, Any]:
    """A chat request body: one user message, or these messages."""
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    return {"model": model, "messages": messages, **extra}


def next_turn(conversation: Messages, answer: str, question: str) -> Messages:
    """``conversation``, then the assistant's ``answer`` and the user's next ``question``."""
    return [
        *conversation,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": question},
    ]


def routing(resp: httpx.Response) -> tuple[str, str]:
    """(the expert that answered, the affinity verdict) from the response headers."""
    return resp.headers["x-coe-expert"], resp.headers["x-coe-affinity"]


def state_of(client: httpx.AsyncClient) -> AppContext:
    """The app context behind a client from ``tests.support.in_process_client``."""
    state: AppContext = client.app.state.coe  # type: ignore[attr-defined]
    return state


async def settle(*clients: httpx.AsyncClient) -> None:
    """Wait for the background writes (affinity, tokens, cache fills, decision log)."""
    for client in clients:
        await state_of(client).shared.background.drain()
