"""Every failure path ends here, as a core error (core/errors.py) answered in the shape of the route's
dialect (dialects/__init__.py): ours, Falcon's own (an unknown route, a wrong method), and any other
exception, which is logged with its traceback and answered with a 500 that names the request id only."""

from __future__ import annotations

from typing import Any

import falcon

from mlx_serve.core.errors import InternalError, MethodNotAllowed, NotFound, ServeError, for_status
from mlx_serve.http.dialects import Dialect, dialect_of, error_body
from mlx_serve.http.pages import RecentErrors
from mlx_serve.logs import get_logger


def dialect(req: falcon.Request) -> Dialect:
    """The request's error shape: what its resource said (/rerank in TEI's form), else its route's."""
    return req.context.get("dialect") or dialect_of(req.method, req.path)


class Handlers:
    """The app's error handlers; each answer with an error status is also kept in `recent` (the status
    page shows the last ones)."""

    def __init__(self, recent: RecentErrors | None = None) -> None:
        self.recent = recent

    def send(self, req: falcon.Request, resp: falcon.Response, error: ServeError) -> None:
        resp.status = error.status
        resp.media = error_body(dialect(req), error, req.context.get("request_id", ""))
        for name, value in error.headers.items():
            resp.set_header(name, value)
        if self.recent is not None:
            self.recent.add(req.method, req.path, error.status, error.code, error.message)

    def serve_error(self, req: falcon.Request, resp: falcon.Response, ex: ServeError, params: dict) -> None:
        self.send(req, resp, ex)

    def http_error(self, req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: dict) -> None:
        """Falcon's own errors (unknown route, wrong method, ...) as core errors."""
        headers = ex.headers or {}
        error: ServeError
        if ex.status_code == 404:
            error = NotFound(f"No route for {req.path}.")
        elif ex.status_code == 405:
            allowed = headers.get("Allow", "")
            error = MethodNotAllowed(f"{req.method} is not allowed on {req.path}; use {allowed}.")
        else:
            code = "".join(c if c.isalnum() else "_" for c in (ex.title or "error").lower()).strip("_0123456789")
            error = for_status(ex.status_code, ex.description or ex.title or "error", code or "error")
        error.headers.update(headers)
        self.send(req, resp, error)

    def unexpected(self, req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
        get_logger("mlx_serve.http").exception("unhandled_error", path=req.path)
        rid = req.context.get("request_id", "")
        self.send(req, resp, InternalError(f"Internal server error (request id {rid})."))


def install(app: falcon.App[Any, Any], recent: RecentErrors | None = None) -> None:
    handlers = Handlers(recent)
    app.add_error_handler(Exception, handlers.unexpected)
    app.add_error_handler(falcon.HTTPError, handlers.http_error)
    app.add_error_handler(ServeError, handlers.serve_error)
