"""Errors in OpenAI's shape, `{"error": {"message", "type", "code", "param"}}`, for every failure path; on
Cohere's routes (/v2/..., /v1/embed) in Cohere's, `{"id", "message"}`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import falcon

from mlx_serve.engine import InputError
from mlx_serve.logs import get_logger
from mlx_serve.runtime import InvalidRequest, ModelNotFound, Overloaded, TooLarge
from mlx_serve.store import InvalidNameError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_error",
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, code: str, param: str | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers: dict[str, str] = {}
        self.error_type = error_type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self, path: str = "", request_id: str = "") -> dict[str, Any]:
        if is_cohere_route(path):
            return {"id": request_id, "message": self.message}
        return {"error": {"message": self.message, "type": self.error_type, "code": self.code, "param": self.param}}


def is_cohere_route(path: str) -> bool:
    return path.startswith("/v2/") or path.rstrip("/") == "/v1/embed"


def bad_request(message: str, code: str = "invalid_request", param: str | None = None) -> ApiError:
    return ApiError(400, message, code, param)


def model_not_found(name: str, param: str = "model") -> ApiError:
    return ApiError(
        404, f"The model {name!r} does not exist. `GET /v1/models` lists the models.", "model_not_found", param
    )


def overloaded(message: str) -> ApiError:
    return ApiError(503, message, "overloaded")


@contextmanager
def runtime_errors(model: str, inputs_param: str | None = None, not_found_param: str = "model") -> Iterator[None]:
    """The runtime's exceptions as API errors; `inputs_param` names the field inputs came in."""
    try:
        yield
    except (ModelNotFound, InvalidNameError):
        raise model_not_found(model, not_found_param) from None
    except InputError as exc:
        param = inputs_param or "input"
        raise bad_request(str(exc).replace("input[", f"{param}["), "invalid_input", param) from None
    except InvalidRequest as exc:
        raise bad_request(str(exc), f"invalid_{exc.param}", exc.param) from None
    except Overloaded as exc:
        raise overloaded(f"The server is busy: {exc}. Retry later.") from None
    except TooLarge as exc:  # the device's memory, not the request's form: a 507, as storage is short
        param = inputs_param or "input"
        message = str(exc).replace("input ", f"{param}[", 1).replace(" does not fit", "] does not fit", 1)
        raise ApiError(507, message, "out_of_memory", param, error_type="server_error") from None


def _send(req: falcon.Request, resp: falcon.Response, error: ApiError) -> None:
    resp.status = error.status
    resp.media = error.body(req.path, getattr(req.context, "request_id", ""))
    for name, value in error.headers.items():
        resp.set_header(name, value)


def handle_api_error(req: falcon.Request, resp: falcon.Response, ex: ApiError, params: dict) -> None:
    _send(req, resp, ex)


def handle_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: dict) -> None:
    """Falcon's own errors (unknown route, wrong method, ...) in the same shape as ours."""
    headers = ex.headers or {}
    if ex.status_code == 404:
        error = ApiError(404, f"No route for {req.path}.", "not_found")
    elif ex.status_code == 405:
        allowed = headers.get("Allow", "")
        error = ApiError(405, f"{req.method} is not allowed on {req.path}; use {allowed}.", "method_not_allowed")
    else:
        code = "".join(c if c.isalnum() else "_" for c in (ex.title or "error").lower()).strip("_0123456789")
        error = ApiError(ex.status_code, ex.description or ex.title or "error", code or "error")
    _send(req, resp, error)
    for name, value in headers.items():
        resp.set_header(name, value)


def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    """Anything else: logged with its traceback, answered with a 500 that names the request id only."""
    get_logger().exception("unhandled_error", path=req.path)
    rid = getattr(req.context, "request_id", "")
    _send(
        req,
        resp,
        ApiError(500, f"Internal server error (request id {rid}).", "internal_error", error_type="server_error"),
    )


def install(app: falcon.App) -> None:
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(ApiError, handle_api_error)
