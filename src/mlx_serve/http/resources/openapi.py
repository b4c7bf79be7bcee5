"""GET /openapi.json: the API described in OpenAPI 3.1 (see http/openapi.py)."""

from __future__ import annotations

from typing import Any

import falcon


class OpenApiResource:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
