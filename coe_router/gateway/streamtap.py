"""Watching a relayed stream on its way to the client, without buffering it.

:class:`StreamTap` wraps the SSE relay. It passes every batch of whole events on at once
and, on the side, keeps a copy for the response cache (up to a size limit) and reads
the ``usage`` chunk for token limits. When the gateway asked the expert for usage that
the client did not ask for (``stream_options.include_usage``), the tap removes that
extra chunk (``"choices": []``), so the client gets the stream it requested.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator

from coe_router.gateway.ratelimit import usage_tokens
from coe_router.gateway.sse import Relay


class StreamTap:
    """Relay wrapper: copy (bounded), read usage, optionally hide the usage chunk."""

    def __init__(self, relay: Relay, *, capture_limit: int | None, hide_usage: bool) -> None:
        self._relay = relay
        self._limit = capture_limit
        self._hide_usage = hide_usage
        self._parts: list[bytes] | None = [] if capture_limit is not None else None
        self._size = 0
        #: ``usage.total_tokens`` of the stream, once its usage chunk went by.
        self.tokens: int | None = None
        self._events = self._run()

    @property
    def captured(self) -> bytes | None:
        """Everything sent to the client, or None when not capturing or over the limit."""
        return None if self._parts is None else b"".join(self._parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        """Close the relay (and with it the upstream stream)."""
        await self._events.aclose()
        await self._relay.aclose()

    async def _run(self) -> AsyncGenerator[bytes, None]:
        async for data in self._relay:
            if b'"usage"' in data:
                data = self._read_usage(data)
            if self._parts is not None and self._limit is not None:
                self._size += len(data)
                if self._size > self._limit:
                    self._parts = None  # too big to cache: stop copying
                else:
                    self._parts.append(data)
            if data:
                yield data

    def _read_usage(self, data: bytes) -> bytes:
        # The relay yields whole events; vLLM separates them with a blank line ("\n\n").
        events = data.split(b"\n\n")
        kept: list[bytes] = []
        for event in events:
            obj = _json_of(event) if b'"usage"' in event else None
            tokens = usage_tokens(obj)
            if tokens is not None:
                self.tokens = tokens
                if self._hide_usage and isinstance(obj, dict) and obj.get("choices") == []:
                    continue
            kept.append(event)
        return b"\n\n".join(kept)


def _json_of(event: bytes) -> object:
    line = event.strip()
    if not line.startswith(b"data:"):
        return None
    try:
        return json.loads(line[5:])
    except ValueError:
        return None
