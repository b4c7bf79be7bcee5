"""GET /v1/models: the models this server can serve, in OpenAI's list shape (with their `type`)."""

from __future__ import annotations

import falcon

from mlx_serve.runtime import Runtime


class ModelsResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {
            "object": "list",
            "data": [
                {"id": e.name, "object": "model", "created": e.created, "owned_by": "mlx-serve", "type": e.type}
                for e in self.runtime.models()
            ],
        }
