"""The model store over HTTP, Ollama-compatible: /api/pull, /api/tags, /api/show, /api/delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import falcon

from mlx_serve.errors import ApiError, bad_request, model_not_found
from mlx_serve.resources import iso_utc
from mlx_serve.resources.body import read_json_object
from mlx_serve.runtime import ModelNotFound, Overloaded, Runtime
from mlx_serve.schemas import parse_name_request
from mlx_serve.store import InvalidNameError, StoreError


class TagsResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        store = self.runtime.store
        models = []
        for entry in store.list():
            details = store.describe(entry)
            models.append(
                {
                    "name": entry.name,
                    "model": entry.name,
                    "type": entry.type,
                    "size": details.get("size", 0),
                    "modified_at": iso_utc(entry.created),
                    "details": {
                        k: details.get(k)
                        for k in ("architecture", "dimensions", "max_length", "quantization", "source", "revision")
                    },
                }
            )
        resp.media = {"models": models}


class ShowResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = parse_name_request(read_json_object(req, self.max_request_bytes)).name
        try:
            entry = self.runtime.entry(name)
        except (ModelNotFound, InvalidNameError):
            raise model_not_found(name) from None
        resp.media = self.runtime.store.describe(entry)


class DeleteResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = parse_name_request(read_json_object(req, self.max_request_bytes)).name
        req.context.model = name
        try:
            self.runtime.delete(name)
        except (ModelNotFound, InvalidNameError):
            raise model_not_found(name) from None
        except StoreError as exc:
            raise bad_request(str(exc), "cannot_delete", "name") from None
        except Overloaded as exc:
            raise ApiError(503, str(exc), "overloaded") from None
        resp.media = {"status": "success", "name": name}


class PullResource:
    """Runs `mlx-serve pull --progress json` as a child and relays its NDJSON lines.

    A child process keeps the download and the conversion (which may need much memory) out of the
    server, and the memory goes back to the system when it exits."""

    def __init__(self, runtime: Runtime, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, self.max_request_bytes)
        source = parse_name_request(body).name
        args = [sys.executable, "-m", "mlx_serve", "pull", source, "--progress", "json"]
        for key in ("type", "quantize"):
            if body.get(key) is not None:
                args += [f"--{key}", str(body[key])]
        if isinstance(body.get("as"), str):
            args += ["--name", body["as"]]
        req.context.model = source
        child = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=os.environ.copy()
        )
        lines = self._lines(child)
        if body.get("stream", True) is False:
            last = list(lines)[-1]
            answer = json.loads(last)
            if "error" in answer:
                raise bad_request(answer["error"], "pull_failed", "model")
            resp.media = answer
            return
        resp.content_type = "application/x-ndjson"
        resp.stream = lines

    @staticmethod
    def _lines(child: subprocess.Popen) -> Iterator[bytes]:
        assert child.stdout is not None
        last = b""
        try:
            for line in child.stdout:
                if line.strip():
                    last = line
                    yield line
        finally:
            code = child.wait()
            if code != 0 and b'"error"' not in last:
                yield json.dumps({"error": f"the pull failed (exit code {code})"}).encode() + b"\n"
