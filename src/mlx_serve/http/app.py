"""The Falcon WSGI app: routes, middleware and error handlers, built from settings and a runtime."""

from __future__ import annotations

from functools import partial
from typing import Any

import falcon
import numpy as np
import orjson

from mlx_serve.http import errors
from mlx_serve.http.middleware import RequestLog
from mlx_serve.http.resources.cache import PsResource, UnloadResource
from mlx_serve.http.resources.embeddings import EmbeddingsResource
from mlx_serve.http.resources.health import HealthResource
from mlx_serve.http.resources.metrics import MetricsResource
from mlx_serve.http.resources.models import ModelsResource
from mlx_serve.http.resources.rerank import RerankResource
from mlx_serve.http.resources.store import DeleteResource, PullResource, ShowResource, TagsResource
from mlx_serve.metrics import Metrics
from mlx_serve.runtime import Runtime
from mlx_serve.settings import Settings


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
    limit = settings.max_request_bytes
    embeddings = EmbeddingsResource(runtime, limit, settings.max_inputs_per_request)
    app.add_route("/v1/embeddings", embeddings)
    app.add_route("/embeddings", embeddings)
    rerank = RerankResource(runtime, limit, settings.max_inputs_per_request)
    app.add_route("/v1/rerank", rerank)
    app.add_route("/rerank", rerank)
    app.add_route("/v1/models", ModelsResource(runtime))
    app.add_route("/api/ps", PsResource(runtime))
    app.add_route("/api/tags", TagsResource(runtime))
    app.add_route("/api/show", ShowResource(runtime, limit))
    app.add_route("/api/delete", DeleteResource(runtime, limit))
    app.add_route("/api/pull", PullResource(runtime, limit))
    app.add_route("/api/unload", UnloadResource(runtime, limit))
    app.add_route("/health", HealthResource(runtime))
    app.add_route("/metrics", MetricsResource(metrics))
    return app
