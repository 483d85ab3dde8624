"""OpenAI wire types, and coe-router's ``coe`` extension to them.

Every type subclasses :class:`OpenAIBaseModel`, which allows extra fields: the
gateway validates what it reads and passes everything else to the expert as it
came. Fields follow the order of OpenAI's API reference; our extensions sit in a
marked block at the end of each type.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

#: How a synthesis merges its panel's answers: the one set of names, used by the request's
#: ``coe.strategy``, the catalog, the settings and the registry in
#: :mod:`coe_router.aggregation.strategies`.
AggregationStrategy = Literal["synthesize", "vote", "best"]


class OpenAIBaseModel(BaseModel):
    """Base of every wire type: unknown fields are kept, not rejected."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


#: Key of the request validation context holding the largest ``n`` accepted
#: (``COE_SERVER__MAX_N``); see :meth:`ChatCompletionRequest.bounded_n`.
MAX_N = "max_n"


class OpenAIRequestModel(OpenAIBaseModel):
    """Base of request types: typed fields are strict (``"stream": "yes"`` or ``"n": "2"`` is
    a 400, not coerced), since the expert receives the client's original values, not ours."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)


# --- requests ---------------------------------------------------------------------------------


class ChatMessage(OpenAIRequestModel):
    """One message of a conversation (any role; tool calls and parts pass through)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(OpenAIRequestModel):
    """``stream_options`` of a streaming request."""

    include_usage: bool | None = None


class CoERequestOptions(BaseModel):
    """The request's ``coe`` extension object. Unknown keys are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: Ask several experts and merge their answers (default: the virtual model's setting).
    synthesis: bool | None = None
    #: How many experts to ask (bounded by ``COE_SYNTHESIS__MAX_K``).
    k: int | None = Field(default=None, ge=1)
    #: The expert that merges the answers (``synthesize``).
    aggregator: str | None = None
    strategy: AggregationStrategy | None = None
    #: Keeps a conversation on its expert across turns (session affinity).
    conversation_id: str | None = Field(default=None, min_length=1, max_length=256)


class ChatCompletionRequest(OpenAIRequestModel):
    """``POST /v1/chat/completions`` body. Only the fields the gateway reads are typed;
    the rest (tools, response_format, logprobs, ...) are kept as extras and forwarded."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(examples=["coe"])
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_logprobs: int | None = None
    top_p: float | None = None
    user: str | None = None

    # --- coe-router extensions ---
    coe: CoERequestOptions | None = None

    @field_validator("n")
    @classmethod
    def bounded_n(cls, n: int | None, info: ValidationInfo) -> int | None:
        """``n`` up to the context's :data:`MAX_N` (each choice costs a whole generation)."""
        limit = (info.context or {}).get(MAX_N)
        if n is not None and isinstance(limit, int) and n > limit:
            raise ValueError(f"at most {limit} choices per request")
        return n


class RouteRequest(OpenAIRequestModel):
    """``POST /v1/route``: the same body as a chat completion; nothing is generated."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(default="coe", examples=["coe"])


# --- responses --------------------------------------------------------------------------------


class RouteCandidate(OpenAIBaseModel):
    """An expert the router considered, with its score."""

    expert: str
    score: float


class FallbackInfo(OpenAIBaseModel):
    """Another expert answered than the routed one (cross-expert fallback)."""

    from_: str = Field(alias="from")
    #: ``no_live_replica``, or the kind of the routed expert's failure.
    reason: str


class CoEInfo(OpenAIBaseModel):
    """The ``coe`` extension object: why this expert answered."""

    expert: str
    category: str | None = None
    confidence: float | None = None
    strategy: str
    virtual_model: str | None = None
    alternatives: list[RouteCandidate] = Field(default_factory=list)
    reason: str | None = None
    fallback: FallbackInfo | None = None


class RouteResponse(OpenAIBaseModel):
    """Result of ``POST /v1/route``."""

    object: Literal["coe.route"] = "coe.route"
    model: str
    expert: str
    category: str | None
    confidence: float | None
    strategy: str
    alternatives: list[RouteCandidate]
    reason: str | None = None
    #: Set when the routed expert has no live replica and fallback would move the request.
    fallback: FallbackInfo | None = None
    routing_ms: float


class ModelCard(OpenAIBaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "coe-router"

    # --- coe-router extensions ---
    coe: dict[str, Any] = Field(default_factory=dict)


class ModelList(OpenAIBaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


def usage_tokens(obj: Any) -> int | None:
    """``usage.total_tokens`` (or prompt + completion) of a response or chunk, if present."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    ints = [p for p in parts if isinstance(p, int) and not isinstance(p, bool)]
    return sum(ints) if ints else None
