"""The Falcon WSGI app: routes, middleware and error handlers, built from settings and a runtime."""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

import falcon
import numpy as np
import orjson
import structlog

from mlx_serve import errors
from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics
from mlx_serve.resources.control import PsResource, UnloadResource
from mlx_serve.resources.embeddings import EmbeddingsResource
from mlx_serve.resources.health import HealthResource
from mlx_serve.resources.metrics import MetricsResource
from mlx_serve.resources.models import ModelsResource
from mlx_serve.resources.rerank import RerankResource
from mlx_serve.resources.store import DeleteResource, PullResource, ShowResource, TagsResource
from mlx_serve.runtime import Runtime
from mlx_serve.settings import Settings

log = get_logger("mlx_serve.access")


class RequestLog:
    """Request id, timing, metrics and one log line per request."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        rid = (req.get_header("X-Request-ID") or "")[:64] or uuid.uuid4().hex
        req.context.request_id = rid
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object, ok: bool) -> None:
        elapsed = time.perf_counter() - req.context.get("started", time.perf_counter())
        status = resp.status_code
        # Unrouted paths share one label, so a scanner cannot blow up the metric's cardinality.
        route = req.uri_template or "unmatched"
        self.metrics.requests.labels(route, req.method, str(status)).inc()
        self.metrics.latency.labels(route, str(status)).observe(elapsed)
        resp.set_header("X-Request-ID", req.context.get("request_id", ""))
        log.info(
            "request",
            method=req.method,
            path=req.path,
            status=status,
            ms=round(elapsed * 1000, 2),
            model=req.context.get("model"),
            tokens=req.context.get("tokens"),
        )
        structlog.contextvars.clear_contextvars()


def _as_list(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):  # orjson takes only C-contiguous arrays itself
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# Responses through orjson: it writes numpy float32 vectors directly, at float32 precision (each value
# reads back as the same float32), about 20x faster than json.dumps of a float list, in half the bytes.
JSON_RESPONSES = falcon.media.JSONHandler(
    dumps=partial(orjson.dumps, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=_as_list),
    loads=orjson.loads,
)


def create_app(settings: Settings, runtime: Runtime, metrics: Metrics) -> falcon.App:
    app = falcon.App(middleware=[RequestLog(metrics)])
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = JSON_RESPONSES
    errors.install(app)
    embeddings = EmbeddingsResource(runtime, settings.max_request_bytes, settings.max_inputs_per_request)
    app.add_route("/v1/embeddings", embeddings)
    app.add_route("/embeddings", embeddings)
    rerank = RerankResource(runtime, settings.max_request_bytes, settings.max_inputs_per_request)
    app.add_route("/v1/rerank", rerank)
    app.add_route("/rerank", rerank)
    app.add_route("/v1/models", ModelsResource(runtime.store))
    app.add_route("/api/ps", PsResource(runtime))
    app.add_route("/api/tags", TagsResource(runtime))
    app.add_route("/api/show", ShowResource(runtime, settings.max_request_bytes))
    app.add_route("/api/delete", DeleteResource(runtime, settings.max_request_bytes))
    app.add_route("/api/pull", PullResource(runtime, settings.max_request_bytes))
    app.add_route("/api/unload", UnloadResource(runtime, settings.max_request_bytes))
    app.add_route("/health", HealthResource(runtime))
    app.add_route("/metrics", MetricsResource(metrics))
    return app
