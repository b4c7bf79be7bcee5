"""Infinity's API: POST /rerank, whose answer gives a returned document's text (litellm's `infinity/`
provider reads it so), with the same fields as /v1/rerank. TEI's clients call /rerank too, with `texts`
instead of `documents`: such a request is TEI's (tei.py), answered and refused in TEI's shapes.

POST /classify is Infinity's classification: `{model, input, raw_scores}` in, and per input a list of
`{label, score}`, best first, out (softmax probabilities, sigmoids for a multi-label model, logits with
`raw_scores`). vLLM's /classify answers another shape ({index, label, probs}); this one is Infinity's."""

from __future__ import annotations

import time
import uuid
from typing import Literal

import falcon
from pydantic import BaseModel, StrictBool

from mlx_serve.core.intents import ClassifyIntent
from mlx_serve.core.service import Service
from mlx_serve.http.dialects import tei
from mlx_serve.http.dialects.base import Limits, Operation, Resource, inputs_in, served
from mlx_serve.http.dialects.jina import RerankRequest, RerankResource, RerankResponse
from mlx_serve.http.dialects.openai import ErrorResponse, Usage
from mlx_serve.http.fields import KeepAlive, ModelName, StrictRequest, parse, require_model, texts_field, too_many


class ClassifyRequest(StrictRequest):
    model: ModelName
    input: texts_field("input")  # type: ignore[valid-type]
    raw_scores: StrictBool = False
    keep_alive: KeepAlive = None


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    object: Literal["classify"]
    data: list[list[LabelScore]]
    model: str
    usage: Usage
    id: str
    created: int


class ClassifyResource(Resource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        require_model(body)
        request = parse(ClassifyRequest, body)
        too_many(len(request.input), self.limits.max_inputs, "inputs", "input")
        with inputs_in("input"):
            result = self.service.classify(ClassifyIntent(request.model, request.input, keep_alive=request.keep_alive))
        served(req, result.model, result.tokens)
        values = result.logits if request.raw_scores else result.scores
        resp.media = {
            "object": "classify",
            "data": [
                sorted(
                    ({"label": label, "score": float(v)} for label, v in zip(result.labels, row, strict=True)),
                    key=lambda item: -item["score"],
                )
                for row in values
            ],
            "model": result.model,
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
            "id": f"infinity-{uuid.uuid4()}",
            "created": int(time.time()),
        }


class InfinityRerankResource(RerankResource):
    documents_as_text = True

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        if "texts" in body and "documents" not in body:
            tei.RerankResource(self.service, self.limits).answer(req, resp, body)
            return
        self.answer(req, resp, body)


def routes(service: Service, limits: Limits) -> dict[str, object]:
    return {"/rerank": InfinityRerankResource(service, limits), "/classify": ClassifyResource(service, limits)}


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
    Operation(
        "post",
        ("/classify",),
        "Classify texts (Infinity's API): per input, {label, score} for each label, best first",
        ClassifyRequest,
        ClassifyResponse,
        errors=(400, 404, 413, 500, 503, 507),
        tag="Infinity",
    ),
)
