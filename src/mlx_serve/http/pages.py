"""The pages a browser sees: /docs (the API reference: Swagger UI 5 over /openapi.json, its files from the
swagger-ui-py package, so it works offline with no CDN) and /status (the loaded models, memory, request and token rates,
the last errors, and a box to try an embedding or a rerank).

The pages themselves hold no data and are public; what they show comes from the API routes they call,
which keep their API key (a field on each page takes it, and Swagger UI's Authorize button).
"""

from __future__ import annotations

import importlib.util
import mimetypes
import time
from collections import deque
from importlib import resources
from pathlib import Path
from typing import Any

import falcon
from pydantic import BaseModel

from mlx_serve.core.errors import NotFound
from mlx_serve.http.dialects.base import Operation

STATIC = Path(str(resources.files("mlx_serve.http") / "static"))


def _swagger_files() -> Path:
    """swagger-ui-py's folder of Swagger UI's files, found without importing it (we use only the files)."""
    spec = importlib.util.find_spec("swagger_ui")
    assert spec is not None and spec.submodule_search_locations, "swagger-ui-py is a dependency: reinstall"
    return Path(spec.submodule_search_locations[0]) / "static"


SWAGGER = _swagger_files()
# Swagger UI's own files that the page loads; nothing else of that folder is served.
SWAGGER_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png")
PUBLIC_PAGES = frozenset({"/docs", "/status", *(f"/docs/{name}" for name in SWAGGER_FILES), "/docs/docs.js"})


class RecentErrors:
    """The last answers with an error status, for the status page (a bounded deque: old ones fall off)."""

    def __init__(self, size: int = 20) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)

    def add(self, method: str, path: str, status: int, code: str, message: str) -> None:
        self._items.appendleft(
            {"time": time.time(), "method": method, "path": path, "status": status, "code": code, "message": message}
        )

    def list(self) -> list[dict[str, Any]]:
        return list(self._items)


class _File:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if self.content_type.startswith("text/") or self.content_type.endswith("javascript"):
            self.content_type += "; charset=utf-8"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self.content_type
        resp.data = self.path.read_bytes()
        resp.cache_control = ["max-age=3600"]


class DocsAsset:
    """GET /docs/{name}: one of Swagger UI's files, or our page's script; any other name is a 404."""

    def __init__(self) -> None:
        self.files = {name: _File(SWAGGER / name) for name in SWAGGER_FILES}
        self.files["docs.js"] = _File(STATIC / "docs.js")

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        found = self.files.get(name)
        if found is None:
            raise NotFound(f"No route for {req.path}.")
        found.on_get(req, resp)


class ErrorsResource:
    """GET /status/errors: the last errors, newest first (behind the API key, as the API is)."""

    def __init__(self, recent: RecentErrors) -> None:
        self.recent = recent

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"errors": self.recent.list()}


def routes(recent: RecentErrors) -> dict[str, object]:
    return {
        "/docs": _File(STATIC / "docs.html"),
        "/docs/{name}": DocsAsset(),
        "/status": _File(STATIC / "status.html"),
        "/status/errors": ErrorsResource(recent),
    }


class RecentError(BaseModel):
    time: float
    method: str
    path: str
    status: int
    code: str
    message: str


class RecentErrorList(BaseModel):
    errors: list[RecentError]


OPERATIONS = (
    Operation(
        "get", ("/docs",), "This reference, in a browser", media_type="text/html", errors=(), public=True, tag="Pages"
    ),
    Operation(
        "get",
        ("/status",),
        "The status page: models, memory, rates, the last errors, and a box to try the API",
        media_type="text/html",
        errors=(),
        public=True,
        tag="Pages",
    ),
    Operation(
        "get",
        ("/status/errors",),
        "The last answers with an error status, newest first",
        response=RecentErrorList,
        errors=(),
        tag="Pages",
    ),
)
