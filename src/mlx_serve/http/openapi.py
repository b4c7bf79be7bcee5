"""The OpenAPI 3.1 document (`GET /openapi.json`), built from the dialects' request and response models: each
dialect lists its operations (dialects/*.OPERATIONS), and pydantic writes their schemas, so the document
cannot drift from what the server validates. The test suite runs schemathesis over it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mlx_serve.http import pages
from mlx_serve.http.dialects import cohere, infinity, jina, ollama, openai, system, tei
from mlx_serve.http.dialects.base import Operation
from mlx_serve.http.dialects.openai import ErrorResponse, ModelCard

ERROR_TEXT = {
    400: "A field is wrong; the message names it.",
    401: "No valid API key.",
    403: "A foreign browser origin, or a Host this server does not answer to.",
    404: "No such model, or no such route.",
    405: "Method not allowed.",
    408: "The request did not arrive in time.",
    413: "The body is over `max_request_bytes`.",
    500: "An output would have held NaN or inf (numerical_overflow), or a bug (internal_error).",
    503: "Busy (queue full or `request_timeout`), shutting down, or not ready.",
    507: "An input does not fit in the device's memory, even alone.",
}
OPERATIONS: tuple[Operation, ...] = (
    *openai.OPERATIONS,
    *jina.OPERATIONS,
    *infinity.OPERATIONS,
    *cohere.OPERATIONS,
    *tei.OPERATIONS,
    *ollama.OPERATIONS,
    *system.OPERATIONS,
    *pages.OPERATIONS,
)


def _requests(op: Operation) -> tuple[type[BaseModel], ...]:
    if op.request is None:
        return ()
    return op.request if isinstance(op.request, tuple) else (op.request,)


def _errors(op: Operation) -> tuple[type[BaseModel], ...]:
    if op.error is None:
        return (ErrorResponse,)
    return op.error if isinstance(op.error, tuple) else (op.error,)


def document(version: str, *, api_key: bool, metrics_public: bool) -> dict[str, Any]:
    requests = {m for op in OPERATIONS for m in _requests(op)}
    responses = {op.response for op in OPERATIONS if op.response} | {m for op in OPERATIONS for m in _errors(op)}
    responses.add(ModelCard)
    keys: list[tuple[type[BaseModel], Any]] = [(m, "validation") for m in sorted(requests, key=_key)]
    keys += [(m, "serialization") for m in sorted(responses, key=_key)]
    refs, defs = models_json_schema(keys, ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        public = op.public or (op.paths[0] == "/metrics" and metrics_public)
        body = _operation(op, refs, api_key and not public)
        for path in op.paths:
            paths.setdefault(path, {})[op.method] = {**body, "operationId": _operation_id(op.method, path)}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "mlx-serve",
            "version": version,
            "description": "Local embedding and reranking server on MLX: the APIs of OpenAI, Voyage, Jina, Cohere, "
            "Infinity, text-embeddings-inference and Ollama.",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    if api_key:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    return doc


def _key(model: type[BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _operation(op: Operation, refs: dict[Any, Any], needs_key: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "responses": {}}
    if op.tag:
        out["tags"] = [op.tag]
    names = [part[1:-1] for path in op.paths[:1] for part in path.split("/") if part.startswith("{")]
    if names:
        out["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    models = _requests(op)
    if models:
        schemas = [refs[(m, "validation")] for m in models]
        schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if op.schema is not None and op.response is not None:  # one of two forms (/rerank: Infinity's or TEI's)
        ok: dict[str, Any] = {"schema": {"anyOf": [refs[(op.response, "serialization")], op.schema]}}
    elif op.schema is not None:
        ok = {"schema": op.schema}
    elif op.response is not None:
        ok = {"schema": refs[(op.response, "serialization")]}
    elif op.media_type == "text/plain":
        ok = {"schema": {"type": "string"}}
    else:
        ok = {"schema": {"type": "object"}}
    out["responses"]["200"] = {"description": "OK", "content": {op.media_type: ok}}
    if op.media_type == "application/x-ndjson":  # `"stream": false` answers once, in JSON
        out["responses"]["200"]["content"]["application/json"] = {"schema": refs[(op.response, "serialization")]}
    shapes = [refs[(m, "serialization")] for m in _errors(op)]
    error = {"content": {"application/json": {"schema": shapes[0] if len(shapes) == 1 else {"anyOf": shapes}}}}
    codes = set(op.errors) | {403, 408}  # any request can meet the browser and Host checks, and the deadline
    if models:
        codes |= {400, 413}
    if needs_key:
        codes.add(401)
        out["security"] = [{"apiKey": []}]
    for code in sorted(codes):
        body = {"content": {"application/json": ok}} if code in op.states else error
        out["responses"][str(code)] = {"description": ERROR_TEXT[code], **body}
    return out


def _operation_id(method: str, path: str) -> str:
    name = path.strip("/").replace("/", "_").replace(".", "_").replace("{", "").replace("}", "") or "root"
    return f"{method}_{name}"
