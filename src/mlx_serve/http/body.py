"""Reading a JSON request body: within the size limit, chunked or not, and only text a model can take.

orjson parses it (with a nesting limit of 1024, so no body can exhaust the stack). orjson refuses lone
UTF-16 surrogates (`"\\ud800"`) outright; such a body is parsed again by the standard library, which
accepts them, so that the answer can name the field and index that holds one.
"""

from __future__ import annotations

import json
from typing import Any

import falcon
import orjson

from mlx_serve.core.errors import InvalidRequest, PayloadTooLarge


def read_json_object(req: falcon.Request, limit: int) -> dict[str, Any]:
    raw = _read(req, limit)
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    body, suspect = _parse(raw)
    if not isinstance(body, dict):
        kind = "null" if body is None else type(body).__name__
        raise InvalidRequest(f"The request body must be a JSON object, not {kind}.", code="invalid_body")
    if suspect:
        _refuse_bad_text(body)
    return body


def _read(req: falcon.Request, limit: int) -> bytes:
    if req.content_length is not None and req.content_length > limit:
        raise too_large(limit)
    # A chunked body has no length: Falcon's bounded stream would read nothing, so read the server's
    # stream, which ends where the chunks end. Either way at most limit + 1 bytes are read.
    chunked = "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
    stream = req.stream if chunked and req.content_length is None else req.bounded_stream
    try:
        raw = stream.read(limit + 1)
    except Exception as exc:  # malformed chunks, a client gone mid-body: the client's fault
        raise InvalidRequest(f"The request body could not be read: {exc}", code="invalid_body") from None
    if len(raw) > limit:
        raise too_large(limit)
    return raw


def _parse(raw: bytes) -> tuple[Any, bool]:
    """The body, and whether it may hold a NUL or a lone surrogate (JSON can only write a NUL escaped,
    and orjson refuses surrogates: most bodies need no walk over their strings)."""
    try:
        return orjson.loads(raw), b"\\u0000" in raw
    except orjson.JSONDecodeError as exc:
        if "surrogate" not in str(exc):
            raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    try:
        text = raw.decode("utf-8")  # the standard library would guess UTF-16 or UTF-32 from bytes
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not UTF-8 text.", code="invalid_json") from None
    try:  # a lone surrogate: read it, so that _refuse_bad_text can say where it is
        return json.loads(text, parse_constant=_no_constants), True
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _refuse_bad_text(body: dict[str, Any]) -> None:
    """Every string in the body must be valid Unicode without NUL characters: a tokenizer cannot take a
    lone surrogate, and no name, path or text of ours needs a NUL. The 400 names where the string is.
    (A loop, not recursion: a body may nest 1024 deep.)"""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, f"a key in {path}" if path else "a key of the body")
                stack.append((item, f"{path}.{key}" if path else str(key)))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise InvalidRequest(f"{path} holds a NUL character (\\u0000)", code=_code(path), param=_param(path))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        message = f"{path} holds a lone UTF-16 surrogate, which is not valid Unicode text"
        raise InvalidRequest(message, code=_code(path), param=_param(path)) from None


def _param(path: str) -> str | None:
    field = path.split("[", 1)[0].split(".", 1)[0]
    return field or None


def _code(path: str) -> str:
    field = _param(path)
    return f"invalid_{field}" if field and field.isidentifier() else "invalid_body"


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes (max_request_bytes).")
