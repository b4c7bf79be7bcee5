"""The OpenAPI 3.1 document (`GET /openapi.json`), built from the pydantic request and response models:
each operation names its models here, and pydantic writes their schemas, so the document cannot drift
from what the server validates. The test suite runs schemathesis over it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mlx_serve.http import schemas as s

ERROR_TEXT = {
    400: "A field is wrong; the message names it.",
    401: "No valid API key.",
    403: "A foreign browser origin, or a Host this server does not answer to.",
    404: "No such model, or no such route.",
    405: "Method not allowed.",
    408: "The request did not arrive in time.",
    413: "The body is over `max_request_bytes`.",
    503: "Busy (queue full or `request_timeout`), shutting down, or not ready.",
}


@dataclass(frozen=True)
class Operation:
    method: str
    paths: tuple[str, ...]  # the route and its aliases
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    media_type: str = "application/json"  # of the 200 answer
    errors: tuple[int, ...] = (400, 404)
    public: bool = False  # reachable without the API key
    error: type[BaseModel] = s.ErrorResponse  # the error shape: OpenAI's, or Cohere's on its routes
    states: tuple[int, ...] = ()  # codes that answer with the response's own shape (/ready's 503)


OPERATIONS = (
    Operation(
        "post",
        ("/v1/embeddings", "/embeddings"),
        "Embed texts or token arrays (OpenAI's API)",
        s.EmbeddingRequest,
        s.EmbeddingResponse,
        errors=(400, 404, 413, 503),
    ),
    Operation(
        "post",
        ("/v1/rerank", "/rerank"),
        "Rank documents by relevance to a query (Jina's and Cohere's v1 API at /v1/rerank, Infinity's at /rerank)",
        s.RerankRequest,
        s.RerankResponse,
        errors=(400, 404, 413, 503),
    ),
    Operation(
        "post",
        ("/v2/embed", "/v1/embed"),
        "Embed texts (Cohere's v2 API; v1 at /v1/embed), as floats, int8, uint8, binary, ubinary or base64",
        s.CohereEmbedRequest,
        s.CohereEmbedResponse,
        errors=(400, 404, 413, 503),
        error=s.CohereError,
    ),
    Operation(
        "post",
        ("/v2/rerank",),
        "Rank documents by relevance to a query (Cohere's v2 API)",
        s.CohereRerankRequest,
        s.CohereRerankResponse,
        errors=(400, 404, 413, 503),
        error=s.CohereError,
    ),
    Operation("get", ("/v1/models",), "The models this server can serve", response=s.ModelList, errors=()),
    Operation("get", ("/v1/models/{model_id}",), "One model (OpenAI's API)", response=s.ModelCard, errors=(404,)),
    Operation("get", ("/api/tags",), "The stored models (Ollama's API)", response=s.TagsResponse, errors=()),
    Operation("post", ("/api/show",), "One model's details", s.NameRequest, s.ModelDetails),
    Operation(
        "delete",
        ("/api/delete",),
        "Remove a stored model, after its in-flight requests",
        s.NameRequest,
        s.StatusResponse,
        errors=(400, 404, 503),
    ),
    Operation(
        "post",
        ("/api/pull",),
        "Pull a model from the Hugging Face Hub or a folder; NDJSON progress unless stream is false",
        s.PullRequest,
        s.StatusResponse,
        media_type="application/x-ndjson",
        errors=(400,),
    ),
    Operation("get", ("/api/ps",), "The loaded models", response=s.PsResponse, errors=()),
    Operation("post", ("/api/unload",), "Unload a model once its requests finish", s.NameRequest, s.StatusResponse),
    Operation("get", ("/health",), "Liveness: the process is up", response=s.Health, errors=(), public=True),
    Operation(
        "get",
        ("/ready",),
        "Readiness for load balancers: 200 ready; 503 while preloading or once a stop has begun",
        response=s.ReadyStatus,
        errors=(503,),
        public=True,
        states=(503,),
    ),
    Operation("get", ("/metrics",), "Prometheus metrics", media_type="text/plain", errors=()),
    Operation("get", ("/openapi.json",), "This document", media_type="application/json", errors=(), public=True),
)


def document(version: str, *, api_key: bool, metrics_public: bool) -> dict[str, Any]:
    requests = {op.request for op in OPERATIONS if op.request}
    responses = {op.response for op in OPERATIONS if op.response} | {op.error for op in OPERATIONS}
    keys = [(m, "validation") for m in sorted(requests, key=lambda m: m.__name__)]
    keys += [(m, "serialization") for m in sorted(responses, key=lambda m: m.__name__)]
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
            "description": "Local embedding and reranking server on MLX (OpenAI, Jina, Cohere and Ollama APIs).",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    if api_key:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    return doc


def _operation(op: Operation, refs: dict, needs_key: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "responses": {}}
    names = [part[1:-1] for path in op.paths[:1] for part in path.split("/") if part.startswith("{")]
    if names:
        out["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    if op.request is not None:
        schema = refs[(op.request, "validation")]
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if op.response is not None:
        ok = {"schema": refs[(op.response, "serialization")]}
    elif op.media_type == "text/plain":
        ok = {"schema": {"type": "string"}}
    else:
        ok = {"schema": {"type": "object"}}
    out["responses"]["200"] = {"description": "OK", "content": {op.media_type: ok}}
    if op.media_type == "application/x-ndjson":  # `"stream": false` answers once, in JSON
        out["responses"]["200"]["content"]["application/json"] = {"schema": refs[(op.response, "serialization")]}
    error = {"content": {"application/json": {"schema": refs[(op.error, "serialization")]}}}
    codes = set(op.errors) | {403, 408}  # any request can meet the browser and Host checks, and the deadline
    if op.request is not None:
        codes |= {400, 413}
    if needs_key:
        codes.add(401)
        out["security"] = [{"apiKey": []}]
    for code in sorted(codes):
        body = {"content": {"application/json": ok}} if code in op.states else error
        out["responses"][str(code)] = {"description": ERROR_TEXT[code], **body}
    return out


def _operation_id(method: str, path: str) -> str:
    return method + "_" + path.strip("/").replace("/", "_").replace(".", "_").replace("{", "").replace("}", "")
