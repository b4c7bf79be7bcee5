"""POST /v1/rerank: Jina's rerank API, which Cohere's v1 (`cohere.Client.rerank`, langchain-cohere) and
Voyage's (voyage.py: `top_k`, `truncation`, and `data` in the answer) share. A returned document comes back
as it was sent: a string as `{"text": ...}`, an object whole."""

from __future__ import annotations

from typing import Any, Literal

import falcon
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from mlx_serve.core.intents import RerankIntent
from mlx_serve.core.service import Service
from mlx_serve.core.types import Truncation
from mlx_serve.http.dialects.base import Limits, Operation, Resource, inputs_in, served
from mlx_serve.http.dialects.openai import Usage
from mlx_serve.http.dialects.voyage import VoyageRerankFields, same, voyage_form
from mlx_serve.http.fields import RankingRequest, document_texts, parse, require_model, too_many


class RerankRequest(RankingRequest, VoyageRerankFields):
    return_documents: StrictBool = False
    # A yes/no verdict per document at a threshold.
    return_text: StrictBool = False
    decision_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    instruction: str | None = Field(default=None, description="The task, for instruction-following rerankers.")
    truncate: StrictBool | None = None


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")  # an object document comes back whole

    text: str | None = None


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | str | None = Field(
        default=None, description="On /v1/rerank the document as given ({text} for a string); on /rerank its text."
    )
    text_output: Literal["yes", "no"] | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: Usage
    object: Literal["list"] | None = Field(default=None, description="Voyage's form only.")
    data: list[RerankResult] | None = Field(default=None, description="Voyage's form only: the results again.")


def rerank_intent(request: Any, texts: list[str], truncate: bool | None) -> RerankIntent:
    return RerankIntent(
        model=request.model,
        query=request.query,
        documents=texts,
        instruction=getattr(request, "instruction", None),
        truncation=None if truncate is None else Truncation(enabled=truncate),
        max_tokens_per_doc=request.max_tokens_per_doc,
        keep_alive=request.keep_alive,
    )


class RerankResource(Resource):
    """`documents_as_text`: /rerank (Infinity) gives a returned document's text, /v1/rerank the document."""

    documents_as_text = False

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        self.answer(req, resp, body)

    def answer(self, req: falcon.Request, resp: falcon.Response, body: dict[str, Any]) -> None:
        require_model(body)
        request = parse(RerankRequest, body)
        too_many(len(request.documents), self.limits.max_inputs, "documents", "documents")
        texts = document_texts(request.documents, request.rank_fields, self.limits.max_request_bytes)
        truncate = same(request.truncate, request.truncation, ("truncate", "truncation"))
        with inputs_in("documents"):
            ranking = self.service.rerank(rerank_intent(request, texts, truncate))
        served(req, ranking.model, ranking.tokens)
        results = []
        for i in ranking.order(same(request.top_n, request.top_k, ("top_n", "top_k"))):
            score = float(ranking.scores[i])
            item: dict[str, Any] = {"index": i, "relevance_score": score}
            if request.return_documents:
                doc = request.documents[i]
                item["document"] = (
                    texts[i] if self.documents_as_text else doc if isinstance(doc, dict) else {"text": doc}
                )
            if request.return_text:
                item["text_output"] = "yes" if score >= request.decision_threshold else "no"
            results.append(item)
        answer: dict[str, Any] = {
            "model": ranking.model,
            "results": results,
            "usage": {"prompt_tokens": ranking.tokens, "total_tokens": ranking.tokens},
        }
        if voyage_form(body):
            answer.update(object="list", data=results)
        resp.media = answer


def routes(service: Service, limits: Limits) -> dict[str, object]:
    return {"/v1/rerank": RerankResource(service, limits)}


OPERATIONS = (
    Operation(
        "post",
        ("/v1/rerank",),
        "Rank documents by relevance to a query (Jina's API; Cohere's v1 and Voyage's too)",
        RerankRequest,
        RerankResponse,
        errors=(400, 404, 413, 500, 503, 507),
        tag="Jina",
    ),
)
