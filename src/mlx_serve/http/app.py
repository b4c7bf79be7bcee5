"""The Falcon WSGI app: routes, middleware and error handlers, built from settings and a runtime."""

from __future__ import annotations

from functools import partial
from typing import Any

import falcon
import numpy as np
import orjson

from mlx_serve import __version__
from mlx_serve.http import errors, openapi
from mlx_serve.http.middleware import RequestLog
from mlx_serve.http.resources.cache import PsResource, UnloadResource
from mlx_serve.http.resources.cohere import CohereEmbedResource, CohereRerankResource
from mlx_serve.http.resources.embeddings import EmbeddingsResource
from mlx_serve.http.resources.health import HealthResource
from mlx_serve.http.resources.metrics import MetricsResource
from mlx_serve.http.resources.models import ModelResource, ModelsResource
from mlx_serve.http.resources.openapi import OpenApiResource
from mlx_serve.http.resources.ready import ReadyResource
from mlx_serve.http.resources.rerank import RerankResource
from mlx_serve.http.resources.store import DeleteResource, PullResource, ShowResource, TagsResource
from mlx_serve.http.security import Guard
from mlx_serve.metrics import Metrics
from mlx_serve.readiness import Readiness
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


def create_app(
    settings: Settings, runtime: Runtime, metrics: Metrics, readiness: Readiness | None = None
) -> falcon.App:
    """`readiness`: the server's (it preloads in the background); without one the app is ready at once."""
    readiness = readiness or Readiness("ready")
    middleware: list[Any] = [RequestLog(metrics), Guard(settings)]
    if settings.allowed_origins:
        middleware.append(falcon.CORSMiddleware(allow_origins=list(settings.allowed_origins)))
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True  # /v1/embeddings/ is /v1/embeddings
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = JSON_RESPONSES
    errors.install(app)
    limit = settings.max_request_bytes
    inputs = settings.max_inputs_per_request
    embeddings = EmbeddingsResource(runtime, limit, inputs)
    document = openapi.document(
        __version__, api_key=settings.resolved_api_key() is not None, metrics_public=settings.metrics_public
    )
    routes: dict[str, object] = {
        "/v1/embeddings": embeddings,
        "/embeddings": embeddings,
        "/v1/rerank": RerankResource(runtime, limit, inputs, documents_as_text=False),
        "/rerank": RerankResource(runtime, limit, inputs, documents_as_text=True),
        "/v1/embed": CohereEmbedResource(runtime, limit, inputs, version="1"),
        "/v2/embed": CohereEmbedResource(runtime, limit, inputs),
        "/v2/rerank": CohereRerankResource(runtime, limit, inputs),
        "/v1/models": ModelsResource(runtime),
        "/v1/models/{model_id:path}": ModelResource(runtime),
        "/api/ps": PsResource(runtime),
        "/api/tags": TagsResource(runtime),
        "/api/show": ShowResource(runtime, limit),
        "/api/delete": DeleteResource(runtime, limit),
        "/api/pull": PullResource(runtime, limit),
        "/api/unload": UnloadResource(runtime, limit),
        "/health": HealthResource(runtime),
        "/ready": ReadyResource(readiness),
        "/metrics": MetricsResource(metrics),
        "/openapi.json": OpenApiResource(document),
    }
    for path, resource in routes.items():
        if hasattr(resource, "on_get") and not hasattr(resource, "on_head"):
            resource.on_head = resource.on_get  # type: ignore[attr-defined]  # HEAD on every GET route
        app.add_route(path, resource)
    return app
