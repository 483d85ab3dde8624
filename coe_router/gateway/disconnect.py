"""A client that hangs up cancels the work done for it (and so the expert calls in it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from coe_router.lifecycle import ClientDisconnected

T = TypeVar("T")


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, but cancel it (closing its upstream calls) if the client disconnects.

    The body must already be read: the next ASGI message is then the disconnect.
    """
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
    if task.cancelled() or not task.done():
        # Let the cancelled upstream calls finish unwinding (closes their connections).
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected
    return task.result()
