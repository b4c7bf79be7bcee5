"""The loaded models over HTTP, Ollama-style: GET /api/ps and POST /api/unload."""

from __future__ import annotations

import falcon

from mlx_serve.http.body import read_json_object
from mlx_serve.http.errors import runtime_errors
from mlx_serve.http.resources import iso_utc
from mlx_serve.http.schemas import parse_name_request
from mlx_serve.runtime import Runtime


class PsResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {
            "models": [
                {
                    "name": m.name,
                    "type": m.type,
                    "size_bytes": m.size_bytes,
                    "in_flight": m.in_flight,
                    "pinned": m.pinned,
                    "expires_at": None if m.expires_at is None else iso_utc(m.expires_at),
                }
                for m in self.runtime.ps()
            ],
            "memory": self.runtime.memory_usage().to_dict(),
        }


class UnloadResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = parse_name_request(read_json_object(req, self.max_request_bytes))
        req.context.model = name
        with runtime_errors(name):
            unloading = self.runtime.unload(name)
        # In-flight requests finish first; the unload itself happens right after them.
        resp.media = {"name": name, "status": "unloading" if unloading else "not_loaded"}
