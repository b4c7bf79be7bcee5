"""The server's own routes: liveness (/health), readiness for load balancers (/ready), Prometheus
(/metrics) and the API's description (/openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

import falcon
from pydantic import BaseModel

from mlx_serve import __version__
from mlx_serve.core.service import Service
from mlx_serve.http.dialects.base import Operation
from mlx_serve.http.dialects.ollama import MemoryUsage
from mlx_serve.metrics import Metrics
from mlx_serve.serving.readiness import Readiness


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    models_loaded: list[str]
    memory: MemoryUsage


class ReadyStatus(BaseModel):
    status: Literal["preloading", "ready", "draining"]


class HealthResource:
    def __init__(self, service: Service) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {
            "status": "ok",
            "version": __version__,
            "models_loaded": sorted({m.name for m in self.service.loaded()}),
            "memory": self.service.memory().to_dict(),
        }


class ReadyResource:
    """200 when this node should get requests: 503 while preloading, and from the start of a graceful stop."""

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.status = 200 if self.readiness.ready else 503
        resp.media = {"status": self.readiness.state}


class MetricsResource:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self.metrics.content_type
        resp.data = self.metrics.render()


class OpenApiResource:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document


OPERATIONS = (
    Operation(
        "get", ("/health",), "Liveness: the process is up", response=Health, errors=(), public=True, tag="Server"
    ),
    Operation(
        "get",
        ("/ready",),
        "Readiness for load balancers: 200 ready; 503 while preloading or once a stop has begun",
        response=ReadyStatus,
        errors=(503,),
        public=True,
        states=(503,),
        tag="Server",
    ),
    Operation("get", ("/metrics",), "Prometheus metrics", media_type="text/plain", errors=(), tag="Server"),
    Operation("get", ("/openapi.json",), "This document", errors=(), public=True, tag="Server"),
)
