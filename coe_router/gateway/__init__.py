"""The HTTP gateway: the only package that imports FastAPI."""

from coe_router.gateway.app import create_app

__all__ = ["create_app"]
