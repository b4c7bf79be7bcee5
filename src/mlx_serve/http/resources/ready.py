"""GET /ready: readiness for load balancers (see readiness.py); 200 when this node should get requests."""

from __future__ import annotations

import falcon

from mlx_serve.readiness import Readiness


class ReadyResource:
    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.status = 200 if self.readiness.ready else 503
        resp.media = {"status": self.readiness.state}
