"""The model store over HTTP, Ollama-compatible: /api/pull, /api/tags, /api/show, /api/delete."""

from __future__ import annotations

import falcon

from mlx_serve import pull_progress
from mlx_serve.http.body import read_json_object
from mlx_serve.http.errors import bad_request, runtime_errors
from mlx_serve.http.resources import iso_utc
from mlx_serve.http.schemas import parse_name_request, parse_pull_request
from mlx_serve.runtime import Runtime
from mlx_serve.store import StoreError

DETAILS = ("architecture", "dimensions", "max_length", "quantization", "source", "revision")


class TagsResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = []
        for entry in self.runtime.models():
            details = self.runtime.describe(entry.name)
            models.append(
                {
                    "name": entry.name,
                    "model": entry.name,
                    "type": entry.type,
                    "size": details.get("size", 0),
                    "modified_at": iso_utc(entry.created),
                    "details": {k: details.get(k) for k in DETAILS},
                }
            )
        resp.media = {"models": models}


class ShowResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = parse_name_request(read_json_object(req, self.max_request_bytes))
        with runtime_errors(name, not_found_param="name"):
            resp.media = self.runtime.describe(name, public=True)


class DeleteResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = parse_name_request(read_json_object(req, self.max_request_bytes))
        req.context.model = name
        with runtime_errors(name):
            try:
                self.runtime.delete(name)
            except StoreError as exc:
                raise bad_request(str(exc), "cannot_delete", "name") from None
        resp.media = {"status": "success", "name": name}


class PullResource:
    """Relays the pull's progress lines (NDJSON, see pull_progress) as they come, or with `"stream":
    false`, answers once with the last one."""

    def __init__(self, runtime: Runtime, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_pull_request(read_json_object(req, self.max_request_bytes))
        req.context.model = request.source
        lines = self.runtime.pull(
            request.source, name=request.as_, type=request.type, quantize=request.quantize, replace=request.replace
        )
        if not request.stream:
            last = list(lines)[-1]
            if (error := pull_progress.error_of(last)) is not None:
                raise bad_request(error, "pull_failed", "model")
            resp.media = pull_progress.decode(last)
            return
        resp.content_type = "application/x-ndjson"
        resp.stream = lines
