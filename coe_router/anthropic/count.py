"""``POST /v1/messages/count_tokens``: exact when the expert can count, labelled when not.

Tokens depend on the expert: its tokenizer and its chat template (role markers, the
tool schemas a template renders into the prompt). The honest count is the expert's own,
so the gateway routes the request as it would route the Messages request and asks that
expert's vLLM ``POST /tokenize`` with the translated chat messages and tools
(:func:`tokenize_body`); the answer is ``{"input_tokens": n, "approximate": false}``.

When the expert cannot be asked without cost or at all (it is asleep in a lower tier,
and waking it to count would be worse than an estimate; it is not vLLM; it failed), the
gateway answers :func:`estimate` with ``"approximate": true``: UTF-8 bytes / 4 over the
text the expert would see, plus a few tokens per message for the template's role
markers and a flat allowance per image. Byte-based rather than character-based, so
scripts that BPE vocabularies split finely (CJK) are not undercounted by 3-4x.
"""

from __future__ import annotations

import json
import math
from typing import Any

from coe_router.anthropic.translate import continues_assistant, openai_messages, openai_tools
from coe_router.anthropic.types import CountTokensRequest, TokenCount
from coe_router.errors import UpstreamBadResponse

#: UTF-8 bytes per token assumed by the estimate (about 4 for English prose under the
#: BPE vocabularies of current chat models; code and other scripts run denser).
BYTES_PER_TOKEN = 4
#: Template tokens per message: role markers and separators (ChatML spends 4-5).
TOKENS_PER_MESSAGE = 4
#: Tokens assumed per image. The estimate does not decode images; vision encoders spend
#: from a few hundred to a few thousand tokens depending on the size.
TOKENS_PER_IMAGE = 1000


def tokenize_body(req: CountTokensRequest, served_model: str) -> dict[str, Any]:
    """The body of vLLM's ``POST /tokenize`` (chat form) that counts ``req``'s input as the
    chat-completions request would render it."""
    body: dict[str, Any] = {"model": served_model, "messages": openai_messages(req)}
    tools = openai_tools(req).get("tools")
    if tools:
        body["tools"] = tools
    if continues_assistant(req):
        body.update(add_generation_prompt=False, continue_final_message=True)
    else:
        body["add_generation_prompt"] = True
    return body


def exact(tokenized: dict[str, Any]) -> TokenCount:
    """The count from vLLM's ``/tokenize`` answer (``{"count": n, ...}``)."""
    count = tokenized.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise UpstreamBadResponse("the expert's /tokenize answer has no token count")
    return TokenCount(input_tokens=count, approximate=False)


def estimate(req: CountTokensRequest) -> TokenCount:
    """An approximate count of ``req``'s input, without any tokenizer."""
    size = 0
    images = 0
    messages = openai_messages(req)
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            size += _bytes(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    size += _bytes(str(part.get("text", "")))
                else:
                    images += 1
        for call in message.get("tool_calls", ()):
            size += _bytes(call["function"]["name"]) + _bytes(call["function"]["arguments"])
    tools = openai_tools(req).get("tools")
    if tools:
        size += _bytes(json.dumps(tools, ensure_ascii=False, separators=(",", ":")))
    tokens = math.ceil(size / BYTES_PER_TOKEN)
    tokens += TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_IMAGE * images
    return TokenCount(input_tokens=tokens, approximate=True)


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))
