"""GET /metrics: Prometheus exposition."""

from __future__ import annotations

import falcon

from mlx_serve.metrics import Metrics


class MetricsResource:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self.metrics.content_type
        resp.data = self.metrics.render()
