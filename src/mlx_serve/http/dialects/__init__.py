"""The protocols this server speaks, one module each. A dialect parses its requests strictly into intents
of the core (core/intents.py), calls the `Service`, and shapes the result and every error its own way:

- openai: /v1/embeddings, /embeddings, /v1/models (with Voyage's fields, voyage.py);
- jina: /v1/rerank (Jina's, Cohere's v1 and Voyage's rerank);
- infinity: /rerank with `documents`, /classify;
- cohere: /v1/embed, /v2/embed, /v2/rerank;
- tei: POST /, /embed, /embed_sparse, /predict, /tokenize, /decode, /info, and /rerank with `texts`;
- ollama: GET /, /api/*;
- system: /health, /ready, /metrics, /openapi.json, /docs, /status.

Error bodies: OpenAI's `{"error": {message, type, code, param}}` (openai, jina, infinity, system),
Cohere's `{"id", "message"}`, Ollama's `{"error": "..."}` (with our `code` beside it), TEI's `{"error", "error_type"}`.

Which status an error has is the core's (core/errors.py); only its body is the dialect's. The worker
answers some errors before the app runs (408, 413, 431, bad framing): `error_response` gives them the
same shape, by the request's method and path. Nothing here imports MLX or Falcon: gunicorn's master
process imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson

from mlx_serve.core.errors import ServeError

Dialect = Literal["openai", "cohere", "ollama", "tei"]  # the error shapes there are
TEI_PATHS = frozenset({"/embed", "/embed_sparse", "/embed_all", "/predict", "/tokenize", "/decode", "/info"})
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}


def dialect_of(method: str, path: str) -> Dialect:
    """The error shape of a route, from its method and path alone (a resource may still say otherwise:
    /rerank answers TEI's shape to a request in TEI's form). No path (an unreadable request line): OpenAI's."""
    if not path:
        return "openai"
    path = path.rstrip("/") or "/"
    if path.startswith("/v2/") or path == "/v1/embed":
        return "cohere"
    if path.startswith("/api/") or (path == "/" and method != "POST"):
        return "ollama"
    if path in TEI_PATHS or path == "/":
        return "tei"
    return "openai"


def _openai(error: ServeError, request_id: str) -> Any:
    kind = OPENAI_TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "code": error.code, "param": error.param}}


def _cohere(error: ServeError, request_id: str) -> Any:
    return {"id": request_id, "message": error.message}


def _ollama(error: ServeError, request_id: str) -> Any:
    return {"error": error.message, "code": error.code}  # Ollama's clients read `error`; `code` is ours


def _tei(error: ServeError, request_id: str) -> Any:
    if error.status in (429, 503):
        kind = "Overloaded"
    elif error.status >= 500:
        kind = "Backend"
    else:
        kind = "Validation"
    return {"error": error.message, "error_type": kind}


SHAPES: dict[Dialect, Callable[[ServeError, str], Any]] = {
    "openai": _openai,
    "cohere": _cohere,
    "ollama": _ollama,
    "tei": _tei,
}


def error_body(dialect: Dialect, error: ServeError, request_id: str = "") -> Any:
    return SHAPES[dialect](error, request_id)


def error_response(error: ServeError, reason: str, method: str, path: str) -> bytes:
    """A complete HTTP response for an error answered before the app runs, closing the connection."""
    body = orjson.dumps(error_body(dialect_of(method, path), error))
    head = (
        f"HTTP/1.1 {error.status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body
