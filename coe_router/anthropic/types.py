"""Anthropic Messages wire types: the request the gateway validates, the answer it builds.

Like :mod:`coe_router.protocol`, every type keeps unknown fields (``extra="allow"``) so a
newer client is not rejected for a field the gateway does not read. Content blocks are a
union on ``type``: text, image (base64 or url source), tool_use and tool_result are
served; any other block type (document, thinking, server tools...) is a 400 that names
the types accepted, because the experts' OpenAI chat API has no equivalent for it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from coe_router.protocol import CoERequestOptions

#: Why the model stopped, as Anthropic names it (the subset an OpenAI expert can cause).
StopReason: TypeAlias = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


class AnthropicBaseModel(BaseModel):
    """Base of every Anthropic wire type: unknown fields are kept, not rejected."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --- content blocks ---------------------------------------------------------------------------


class TextBlock(AnthropicBaseModel):
    """``{"type": "text", "text": ...}`` (``cache_control``, ``citations`` kept as extras)."""

    type: Literal["text"] = "text"
    text: str


class Base64ImageSource(AnthropicBaseModel):
    """An image sent inline."""

    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLImageSource(AnthropicBaseModel):
    """An image the expert fetches from a URL."""

    type: Literal["url"]
    url: str


ImageSource = Annotated[Base64ImageSource | URLImageSource, Field(discriminator="type")]


class ImageBlock(AnthropicBaseModel):
    """``{"type": "image", "source": {...}}``."""

    type: Literal["image"] = "image"
    source: ImageSource


class ToolUseBlock(AnthropicBaseModel):
    """The model calls a tool (in an assistant turn, or in the answer)."""

    type: Literal["tool_use"] = "tool_use"
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


ToolResultContent = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(AnthropicBaseModel):
    """The client's answer to a ``tool_use`` block (in a user turn)."""

    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultContent] | None = None
    is_error: bool | None = None


RequestBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")
]
ResponseBlock = Annotated[TextBlock | ToolUseBlock, Field(discriminator="type")]


# --- requests ---------------------------------------------------------------------------------


class MessageParam(AnthropicBaseModel):
    """One turn of the conversation."""

    role: Literal["user", "assistant"]
    content: str | list[RequestBlock]


class Tool(AnthropicBaseModel):
    """A client tool: a name, what it does, and a JSON schema for its input."""

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoiceAuto(AnthropicBaseModel):
    """The model decides whether to call a tool."""

    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(AnthropicBaseModel):
    """The model must call some tool."""

    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(AnthropicBaseModel):
    """The model must call the named tool."""

    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(AnthropicBaseModel):
    """The model may not call tools."""

    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class Metadata(AnthropicBaseModel):
    """``metadata``: an opaque end-user id."""

    user_id: str | None = None


class CountTokensRequest(AnthropicBaseModel):
    """``POST /v1/messages/count_tokens``: what a Messages request would send as input."""

    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None

    # --- coe-router extensions ---
    coe: CoERequestOptions | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``. Fields the experts cannot honour (``thinking``,
    ``service_tier``, ...) are accepted and not forwarded."""

    max_tokens: int = Field(ge=1)
    metadata: Metadata | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)


# --- responses --------------------------------------------------------------------------------


class Usage(AnthropicBaseModel):
    """Tokens in and out, as the expert counted them."""

    input_tokens: int
    output_tokens: int
    #: Prompt tokens the expert served from its prefix cache, when it says.
    cache_read_input_tokens: int | None = None


class Message(AnthropicBaseModel):
    """The answer of ``POST /v1/messages`` (not streamed)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ResponseBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(AnthropicBaseModel):
    """The answer of ``POST /v1/messages/count_tokens``."""

    input_tokens: int

    # --- coe-router extensions ---
    #: True when the count is an estimate, not the expert's tokenizer and chat template.
    approximate: bool
