"""What every dialect's resources share: the service, the request limits, reading a body, naming the
field an input error concerns, and the OpenAPI description of each route (http/openapi.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import falcon
from pydantic import BaseModel

from mlx_serve.core.errors import InputTooLong, ServeError
from mlx_serve.core.service import Service
from mlx_serve.http.body import read_json_object


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int
    max_inputs: int


class Resource:
    """A route's handler: it reads and parses the body, builds an intent, calls the service, and shapes
    the answer. Nothing else: no MLX, no files."""

    def __init__(self, service: Service, limits: Limits) -> None:
        self.service = service
        self.limits = limits

    def body(self, req: falcon.Request) -> dict[str, Any]:
        return read_json_object(req, self.limits.max_request_bytes)


@contextmanager
def inputs_in(field: str, truncate: str = "truncate: true") -> Iterator[None]:
    """Errors about an input (its index) name this dialect's field for the inputs (`texts[3] ...`), and an
    input too long says how this dialect allows truncation."""
    try:
        yield
    except ServeError as exc:
        if isinstance(exc, InputTooLong):
            exc.detail += f" ({truncate})"
        raise exc.in_field(field) from None


def served(req: falcon.Request, model: str, tokens: int | None = None) -> None:
    """What the access log line and the metrics say about this request."""
    req.context.model = model
    if tokens is not None:
        req.context.tokens = tokens


@dataclass(frozen=True)
class Operation:
    """One route in the OpenAPI document."""

    method: str
    paths: tuple[str, ...]  # the route and its aliases
    summary: str
    request: type[BaseModel] | tuple[type[BaseModel], ...] | None = None  # several: any one of them
    response: type[BaseModel] | None = None
    schema: dict[str, Any] | None = None  # the 200 answer's schema when it is no model (a bare array)
    media_type: str = "application/json"  # of the 200 answer
    errors: tuple[int, ...] = (400, 404)
    public: bool = False  # reachable without the API key
    # the error body's schema (None: OpenAI's); several: the route answers each form in its own shape
    error: type[BaseModel] | tuple[type[BaseModel], ...] | None = None
    states: tuple[int, ...] = ()  # codes that answer with the response's own shape (/ready's 503)
    tag: str = ""
