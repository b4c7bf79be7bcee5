"""GET /v1/models: the models this server can serve, in OpenAI's list shape (with their `type`)."""

from __future__ import annotations

import falcon

from mlx_serve.store import ModelStore


class ModelsResource:
    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {
            "object": "list",
            "data": [
                {"id": e.name, "object": "model", "created": e.created, "owned_by": "mlx-serve", "type": e.type}
                for e in self.store.list()
            ],
        }
