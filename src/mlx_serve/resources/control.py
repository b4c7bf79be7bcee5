"""The Ollama-style control plane over loaded models: GET /api/ps and POST /api/unload."""

from __future__ import annotations

import falcon

from mlx_serve.errors import model_not_found
from mlx_serve.resources import iso_utc
from mlx_serve.resources.body import read_json_object
from mlx_serve.runtime import ModelNotFound, Runtime
from mlx_serve.schemas import parse_name_request
from mlx_serve.store import InvalidNameError


class PsResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = self.runtime.cache.snapshot()
        resp.media = {"models": [{**m, "expires_at": m["expires_at"] and iso_utc(m["expires_at"])} for m in models]}


class UnloadResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = parse_name_request(read_json_object(req, self.max_request_bytes)).name
        req.context.model = name
        try:
            unloading = self.runtime.unload(name)
        except (ModelNotFound, InvalidNameError):
            raise model_not_found(name) from None
        # In-flight requests finish first; the unload itself happens right after them.
        resp.media = {"name": name, "status": "unloading" if unloading else "not_loaded"}
