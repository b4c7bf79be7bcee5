"""Reading a JSON request body within the size limit."""

from __future__ import annotations

import json
from typing import Any

import falcon

from mlx_serve.http.errors import ApiError, bad_request


def read_json_object(req: falcon.Request, limit: int) -> dict[str, Any]:
    if req.content_length is not None and req.content_length > limit:
        raise too_large(limit)
    raw = req.bounded_stream.read(limit + 1)  # also bounds chunked bodies, which have no length
    if len(raw) > limit:
        raise too_large(limit)
    if not raw.strip():
        raise bad_request("The request body is empty; send a JSON object.", "invalid_json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, not {type(body).__name__}.", "invalid_body")
    return body


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"The request body is larger than the limit of {limit} bytes.", "payload_too_large")
