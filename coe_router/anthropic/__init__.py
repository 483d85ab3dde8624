"""Anthropic Messages API, spoken by translating to and from the experts' OpenAI chat API.

FastAPI-free: ``types`` (wire types), ``translate`` (request and response), ``stream``
(OpenAI chunks -> Anthropic events), ``relay`` (an expert's stream to the client, with the
request's lifecycle), ``errors`` (Anthropic's error body) and ``count``
(``/v1/messages/count_tokens``). The HTTP adapter is ``coe_router.gateway.messages``.
"""
