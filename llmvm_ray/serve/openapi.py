"""The HTTP API's OpenAPI document, as published in ``docs/openapi.json``.

Built from the real FastAPI app (``routes.create_app``) so it cannot drift from the routes;
``llmvm docs openapi`` writes it and ``--check`` fails when the file is stale. The routes
return ``JSONResponse`` objects (errors and streams need that), so FastAPI knows only the
request bodies; the response models from ``protocol.py`` are added here, per route, with the
error shape every 4xx/5xx uses. No Ray is needed: the app is built around an idle service.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from llmvm_ray.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompleteResponse,
    CompletionResponse,
    ErrorResponse,
    ModelList,
)

REF = "#/components/schemas/{model}"
# (path, method) -> the model of a 200 answer; streams are documented beside it.
RESPONSES: dict[tuple[str, str], type[BaseModel]] = {
    ("/v1/completions", "post"): CompletionResponse,
    ("/v1/chat/completions", "post"): ChatCompletionResponse,
    ("/v1/complete", "post"): CompleteResponse,
    ("/v1/models", "get"): ModelList,
}
STREAMING = {("/v1/completions", "post"), ("/v1/chat/completions", "post")}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI document of the service's HTTP API."""
    from llmvm_ray.config import Config
    from llmvm_ray.serve.routes import create_app
    from llmvm_ray.serve.service import OpenAIService

    app = create_app(OpenAIService(Config(), {}, None))
    schema = app.openapi()
    models = [*RESPONSES.values(), ChatCompletionChunk, ErrorResponse]
    _, defs = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in defs.get("$defs", {}).items():
        components.setdefault(name, definition)
    error = {"description": "OpenAI-shaped error", "content": {"application/json": {}}}
    error["content"]["application/json"]["schema"] = _ref(ErrorResponse)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # validation errors are 400s with the error shape
            model = RESPONSES.get((path, method))
            if model is not None:
                content: dict[str, Any] = {"application/json": {"schema": _ref(model)}}
                if (path, method) in STREAMING:
                    content["text/event-stream"] = {
                        "schema": {"type": "string"},
                        "description": "With `stream: true`: server-sent events, one "
                        + ("ChatCompletionChunk" if "chat" in path else "CompletionResponse")
                        + " JSON per `data:` line, then `data: [DONE]`.",
                    }
                responses["200"] = {"description": "Successful Response", "content": content}
            if path.startswith("/v1/"):
                responses["4XX"] = error
                responses["5XX"] = error
    schema["components"]["schemas"] = dict(sorted(components.items()))
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    return schema


def render() -> str:
    return json.dumps(openapi_schema(), indent=2) + "\n"
