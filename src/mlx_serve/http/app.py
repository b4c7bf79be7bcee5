"""The Falcon WSGI app: every dialect's routes, the middleware and the error handlers, built from settings
and a `Service` (core/service.py): the runtime in the server, a fake in the HTTP tests."""

from __future__ import annotations

from functools import partial
from typing import Any

import falcon
import numpy as np
import orjson

from mlx_serve import __version__
from mlx_serve.core.service import Service
from mlx_serve.http import errors, openapi, pages
from mlx_serve.http.dialects import cohere, infinity, jina, ollama, openai, system, tei
from mlx_serve.http.dialects.base import Limits
from mlx_serve.http.middleware import RequestLog
from mlx_serve.http.security import Guard
from mlx_serve.metrics import Metrics
from mlx_serve.serving.readiness import Readiness
from mlx_serve.settings import Settings


def _as_list(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):  # orjson takes only C-contiguous arrays itself
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# Responses through orjson: it writes numpy float32 vectors directly, at float32 precision (each value
# reads back as the same float32), about 20x faster than json.dumps of a float list, in half the bytes.
JSON_RESPONSES = falcon.media.JSONHandler(
    dumps=partial(orjson.dumps, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=_as_list),
    loads=orjson.loads,
)


def create_app(
    settings: Settings,
    service: Service,
    metrics: Metrics,
    readiness: Readiness | None = None,
    max_batch_tokens: int = 0,
) -> falcon.App:
    """`readiness`: the server's (it preloads in the background); without one the app is ready at once.
    `max_batch_tokens`: the scheduler's budget, which TEI's /info reports."""
    readiness = readiness or Readiness("ready")
    middleware: list[Any] = [RequestLog(metrics), Guard(settings)]
    if settings.allowed_origins:
        middleware.append(falcon.CORSMiddleware(allow_origins=list(settings.allowed_origins)))
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True  # /v1/embeddings/ is /v1/embeddings
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = JSON_RESPONSES
    recent = pages.RecentErrors()
    errors.install(app, recent)
    limits = Limits(settings.max_request_bytes, settings.max_inputs_per_request)
    document = openapi.document(
        __version__, api_key=settings.resolved_api_key() is not None, metrics_public=settings.metrics_public
    )
    routes: dict[str, object] = {
        **openai.routes(service, limits),
        **jina.routes(service, limits),
        **infinity.routes(service, limits),
        **cohere.routes(service, limits),
        **tei.routes(service, limits, max_batch_tokens),
        **ollama.routes(service, limits),
        "/health": system.HealthResource(service),
        "/ready": system.ReadyResource(readiness),
        "/metrics": system.MetricsResource(metrics),
        "/openapi.json": system.OpenApiResource(document),
        **pages.routes(recent),
    }
    # POST / is TEI's embed (and rerank); GET / is Ollama's "running" (a browser's: the status page).
    routes["/"] = _Root(routes["/"], tei.EmbedResource(service, limits))
    for path, resource in routes.items():
        if hasattr(resource, "on_get") and not hasattr(resource, "on_head"):
            resource.on_head = resource.on_get  # type: ignore[attr-defined]  # HEAD on every GET route
        app.add_route(path, resource)
    return app


class _Root:
    def __init__(self, get: Any, post: Any) -> None:
        self.on_get = get.on_get
        self.on_post = post.on_post
