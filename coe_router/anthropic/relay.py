"""OpenAI chat streams re-framed as Anthropic events for a Messages client.

:class:`MessagesRelay`: an expert's stream, with the request's bookkeeping (the Messages
counterpart of :meth:`RequestLifecycle.relay`). :class:`TranslatedStream`: a stream whose
producer keeps its own bookkeeping (a synthesis), only re-framed.

The upstream bytes go through the same :class:`~coe_router.sse.Relay` as a chat stream
(whole events, time to first token, errors in-band), are parsed into chunks and translated
by :class:`~coe_router.anthropic.stream.MessageStream`. When the client's stream ends,
a complete message is charged to the caller's token limit and its Anthropic bytes are
cached (so a cache hit replays Anthropic events, not OpenAI chunks); the lifecycle then
finishes with the outcome, once, however the stream ended.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from coe_router.anthropic.stream import MessageStream
from coe_router.closing import EndOnce
from coe_router.errors import UpstreamBadResponse
from coe_router.experts.expert import UpstreamStream
from coe_router.lifecycle import RequestLifecycle
from coe_router.shared.cache import CachedAnswer
from coe_router.sse import Capture, ClosableStream, Relay, data_events


async def parsed_chunks(stream: ClosableStream) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON objects of an OpenAI SSE stream, up to ``[DONE]``; then the rest of the
    stream is read too, so its producer sees it end (and reports its outcome)."""
    async for data in data_events(stream):
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamBadResponse("the expert sent an event that is not JSON") from None
        if isinstance(chunk, dict):
            yield chunk
    async for _ in stream:
        pass


class TranslatedStream:
    """An OpenAI SSE stream (a synthesis answer) as Anthropic events; closing it closes
    the inner stream, whose producer does the bookkeeping."""

    def __init__(
        self, inner: ClosableStream, *, model: str, stop_sequences: list[str] | None
    ) -> None:
        self._inner = inner
        self.messages = MessageStream(
            parsed_chunks(inner), model=model, stop_sequences=stop_sequences
        )

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.messages.__aiter__()

    async def aclose(self) -> None:
        """Stop translating and close the inner stream (idempotent)."""
        try:
            await self.messages.aclose()
        finally:
            await self._inner.aclose()


class MessagesRelay:
    """The client's Anthropic event stream of one expert's OpenAI stream."""

    def __init__(
        self,
        upstream: UpstreamStream,
        lifecycle: RequestLifecycle,
        *,
        model: str,
        stop_sequences: list[str] | None,
        routing_headers: dict[str, str],
        capture_limit: int | None,
    ) -> None:
        self._lifecycle = lifecycle
        self._routing_headers = routing_headers
        self._capture = Capture(capture_limit)
        self._outcome = "499"
        self._finish = EndOnce(self._close_all, self._settle)
        self._relay = Relay(upstream, on_first_byte=lifecycle.first_byte, on_end=self._relay_end)
        self.messages = MessageStream(
            parsed_chunks(self._relay), model=model, stop_sequences=stop_sequences
        )
        self._events = self._run()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        """Stop: close the translation and the upstream stream, and finish (idempotent)."""
        await self._events.aclose()
        await self._finish()

    def _relay_end(self, status: str) -> None:
        self._outcome = status

    async def _run(self) -> AsyncGenerator[bytes, None]:
        try:
            async for event in self.messages:
                self._capture.add(event)
                yield event
        finally:
            await self._finish()

    async def _close_all(self) -> None:
        try:
            await self.messages.aclose()
        finally:
            await self._relay.aclose()  # reports the upstream outcome

    def _settle(self) -> None:
        status = self._outcome
        failed = self.messages.failed
        if failed is not None and status in ("200", "499"):
            status = str(failed.status_code)
        elif status == "200" and not self.messages.complete:
            status = "499"  # the client left before the end of the message
        if status == "200":
            self._lifecycle.charge(self.messages.usage_in + self.messages.usage_out)
            body = self._capture.captured
            if body is not None:
                self._lifecycle.fill(CachedAnswer("sse", self._routing_headers, body))
        self._lifecycle.finish(status)
