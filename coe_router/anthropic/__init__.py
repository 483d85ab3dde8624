"""Anthropic Messages API, spoken by translating to and from the experts' OpenAI chat API.

FastAPI-free: ``types`` (wire types), ``translate`` (request and response), ``stream``
(OpenAI chunks -> Anthropic events), ``errors`` (Anthropic's error body) and ``count``
(``/v1/messages/count_tokens``). The HTTP adapter lives in ``coe_router.gateway``.
"""
