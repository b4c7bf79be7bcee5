"""GET /health: liveness and what is loaded."""

from __future__ import annotations

import falcon

from mlx_serve import __version__
from mlx_serve.runtime import Runtime


class HealthResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {
            "status": "ok",
            "version": __version__,
            "models_loaded": self.runtime.loaded(),
            "memory": self.runtime.memory_usage().to_dict(),
        }
