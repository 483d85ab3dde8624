"""The OpenAPI document (``/openapi.json``, when ``COE_SERVER__DOCS`` is on).

The chat routes read their bodies themselves (to answer bad JSON with OpenAI's errors, not
FastAPI's), so FastAPI cannot see what they take: their request bodies are added here from
the same models the routes validate with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from coe_router.protocol import ChatCompletionRequest, RouteRequest

#: Route -> the model of its JSON body.
BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/route": RouteRequest,
}


def install_openapi(app: FastAPI, models: Sequence[str]) -> None:
    """Serve FastAPI's document with the chat routes' request bodies filled in; ``model``
    is one of ``models`` (the catalog's virtual models and experts)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for path, model in BODIES.items():
                operation = doc["paths"].get(path, {}).get("post")
                if operation is None:
                    continue
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schema["properties"]["model"]["enum"] = list(models)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
                operation["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}  # fmt: skip
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
