"""Infinity's API: POST /rerank, whose answer gives a returned document's text (litellm's `infinity/`
provider reads it so), with the same fields as /v1/rerank. TEI's clients call /rerank too, with `texts`
instead of `documents`: such a request is TEI's (tei.py), answered and refused in TEI's shapes."""

from __future__ import annotations

import falcon

from mlx_serve.core.service import Service
from mlx_serve.http.dialects import tei
from mlx_serve.http.dialects.base import Limits, Operation
from mlx_serve.http.dialects.jina import RerankRequest, RerankResource, RerankResponse
from mlx_serve.http.dialects.openai import ErrorResponse


class InfinityRerankResource(RerankResource):
    documents_as_text = True

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        if "texts" in body and "documents" not in body:
            tei.RerankResource(self.service, self.limits).answer(req, resp, body)
            return
        self.answer(req, resp, body)


def routes(service: Service, limits: Limits) -> dict[str, object]:
    return {"/rerank": InfinityRerankResource(service, limits)}


OPERATIONS = (
    Operation(
        "post",
        ("/rerank",),
        "Rank documents (Infinity's API: a returned document is its text); with `texts`, TEI's rerank (a bare "
        "array of {index, score, text?})",
        (RerankRequest, tei.TeiRerankRequest),
        RerankResponse,
        schema=tei.RANKS,  # with `texts`
        errors=(400, 404, 413, 500, 503, 507),
        error=(ErrorResponse, tei.TeiError),
        tag="Infinity",
    ),
)
