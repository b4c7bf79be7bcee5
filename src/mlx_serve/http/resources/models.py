"""GET /v1/models and GET /v1/models/{id}: the models this server can serve, in OpenAI's shape (with
their `type`)."""

from __future__ import annotations

from typing import Any

import falcon

from mlx_serve.http.errors import model_not_found
from mlx_serve.runtime import ModelNotFound, Runtime
from mlx_serve.store import InvalidNameError, ModelEntry


def card(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.name,
        "object": "model",
        "created": entry.created,
        "owned_by": "mlx-serve",
        "type": entry.type,
        "architecture": entry.architecture or None,
    }


class ModelsResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"object": "list", "data": [card(e) for e in self.runtime.models()]}


class ModelResource:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        try:
            entry = self.runtime.entry(model_id)
        except (ModelNotFound, InvalidNameError):
            raise model_not_found(model_id) from None
        resp.media = card(entry)
