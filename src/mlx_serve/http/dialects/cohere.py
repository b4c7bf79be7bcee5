"""Cohere's API: POST /v2/embed and /v2/rerank, as `cohere.ClientV2` (and langchain-cohere's CohereRerank,
litellm's `cohere/`) call them, and POST /v1/embed, Cohere's v1 embed (langchain-cohere's
CohereEmbeddings). Errors on these routes take Cohere's shape, `{"id", "message"}`."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import falcon
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from mlx_serve.core.intents import EmbedIntent, RerankIntent
from mlx_serve.core.service import Service
from mlx_serve.core.types import InputType, Truncation
from mlx_serve.http.dialects.base import Limits, Operation, Resource, inputs_in, served
from mlx_serve.http.encodings import base64_rows, quantize
from mlx_serve.http.fields import (
    HARMLESS,
    KeepAlive,
    ModelName,
    RankingRequest,
    StrictRequest,
    document_texts,
    parse,
    require_model,
    too_many,
)

# Cohere's input types -> the model's prompts (engine/st_layout.PROMPT_NAMES: a model without a prompt
# for one embeds the text as it is).
INPUT_TYPES: dict[str, InputType] = {
    "search_query": "query",
    "search_document": "document",
    "classification": "classification",
    "clustering": "clustering",
}
EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
PRIORITY = f"Cohere's scheduling priority. {HARMLESS}"


class CohereEmbedText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: Any = None


class CohereEmbedInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: list[CohereEmbedText] = Field(min_length=1)


class CohereEmbedRequest(StrictRequest):
    model: ModelName
    input_type: Literal["search_query", "search_document", "classification", "clustering"] | None = None
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    images: list[str] | None = None
    inputs: list[CohereEmbedInput] | None = Field(default=None, min_length=1)
    embedding_types: list[EmbeddingType] | None = Field(default=None, min_length=1)
    truncate: Literal["NONE", "START", "END"] | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    output_dimension: StrictInt | None = Field(default=None, ge=1)
    priority: int | None = Field(default=None, description=PRIORITY)
    keep_alive: KeepAlive = None

    @model_validator(mode="after")
    def _texts_only(self) -> CohereEmbedRequest:
        if self.images:
            raise ValueError("images: this server embeds text only")
        if self.texts is None and self.inputs is None:
            raise ValueError("texts: give `texts` (or `inputs` with text content)")
        if self.inputs is not None:
            for i, item in enumerate(self.inputs):
                if any(part.type != "text" or not part.text for part in item.content):
                    raise ValueError(f"inputs[{i}]: this server embeds text only, and every part needs its `text`")
        return self

    @property
    def all_texts(self) -> list[str]:
        if self.texts is not None:
            return list(self.texts)
        # An input's text parts make one text, as Cohere concatenates an interleaved input's parts.
        return ["\n".join(part.text or "" for part in item.content) for item in self.inputs or []]


class CohereRerankRequest(RankingRequest):
    """`cohere.ClientV2.rerank`'s body (`rank_fields` for object documents, as on v1)."""

    priority: int | None = Field(default=None, description=PRIORITY)


class CohereError(BaseModel):
    """Errors on Cohere's routes, in Cohere's shape."""

    id: str | None = None
    message: str


class CohereMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    api_version: dict[str, str]
    billed_units: dict[str, int]


class CohereEmbeddings(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    float_: list[list[float]] | None = Field(default=None, alias="float")
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class CohereEmbedResponse(BaseModel):
    id: str
    response_type: Literal["embeddings_by_type", "embeddings_floats"]
    embeddings: CohereEmbeddings | list[list[float]] = Field(
        description="By type; on /v1/embed without embedding_types, the float vectors (embeddings_floats)."
    )
    texts: list[str]
    meta: CohereMeta


class CohereRerankResult(BaseModel):
    index: int
    relevance_score: float


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereRerankResult]
    meta: CohereMeta


def _meta(version: str = "2", **billed: int) -> dict[str, Any]:
    return {"api_version": {"version": version}, "billed_units": billed}


class EmbedResource(Resource):
    def __init__(self, service: Service, limits: Limits, version: str = "2") -> None:
        super().__init__(service, limits)
        self.version = version  # "1": without embedding_types, v1 answers a plain list of float vectors

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        require_model(body)
        request = parse(CohereEmbedRequest, body)
        texts = request.all_texts
        too_many(len(texts), self.limits.max_inputs, "texts", "texts")
        truncation = None  # the server's auto_truncate
        if request.truncate is not None or request.max_tokens is not None:
            truncation = Truncation(
                enabled=request.truncate != "NONE",
                side="start" if request.truncate == "START" else "end",
                max_tokens=request.max_tokens,
            )
        intent = EmbedIntent(
            model=request.model,
            inputs=texts,
            dimensions=request.output_dimension,
            input_type=INPUT_TYPES[request.input_type] if request.input_type else None,
            truncation=truncation,
            keep_alive=request.keep_alive,
        )
        with inputs_in("texts", 'truncate: "END"'):
            result = self.service.embed(intent)
        served(req, result.model, result.tokens)
        vectors = result.dense
        assert vectors is not None
        embeddings: dict[str, Any] = {}
        for kind in dict.fromkeys(request.embedding_types or ["float"]):
            if kind == "float":
                embeddings["float"] = vectors
            elif kind == "base64":  # the float32 bytes, as Cohere's SDK decodes them
                embeddings["base64"] = base64_rows(vectors)
            else:
                embeddings[kind] = quantize(vectors, kind)
        floats_only = self.version == "1" and request.embedding_types is None
        resp.media = {
            "id": str(uuid.uuid4()),
            "response_type": "embeddings_floats" if floats_only else "embeddings_by_type",
            "embeddings": vectors if floats_only else embeddings,
            "texts": texts,
            "meta": _meta(self.version, input_tokens=result.tokens),
        }


class RerankResource(Resource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        require_model(body)
        request = parse(CohereRerankRequest, body)
        too_many(len(request.documents), self.limits.max_inputs, "documents", "documents")
        texts = document_texts(request.documents, request.rank_fields, self.limits.max_request_bytes)
        intent = RerankIntent(
            model=request.model,
            query=request.query,
            documents=texts,
            max_tokens_per_doc=request.max_tokens_per_doc,
            keep_alive=request.keep_alive,
        )
        with inputs_in("documents", "max_tokens_per_doc"):
            ranking = self.service.rerank(intent)
        served(req, ranking.model, ranking.tokens)
        resp.media = {
            "id": str(uuid.uuid4()),
            "results": [
                {"index": i, "relevance_score": float(ranking.scores[i])} for i in ranking.order(request.top_n)
            ],
            "meta": _meta(search_units=1, input_tokens=ranking.tokens),
        }


def routes(service: Service, limits: Limits) -> dict[str, object]:
    return {
        "/v1/embed": EmbedResource(service, limits, version="1"),
        "/v2/embed": EmbedResource(service, limits),
        "/v2/rerank": RerankResource(service, limits),
    }


OPERATIONS = (
    Operation(
        "post",
        ("/v2/embed", "/v1/embed"),
        "Embed texts (Cohere's v2 API; v1 at /v1/embed), as floats, int8, uint8, binary, ubinary or base64",
        CohereEmbedRequest,
        CohereEmbedResponse,
        errors=(400, 404, 413, 500, 503, 507),
        error=CohereError,
        tag="Cohere",
    ),
    Operation(
        "post",
        ("/v2/rerank",),
        "Rank documents by relevance to a query (Cohere's v2 API)",
        CohereRerankRequest,
        CohereRerankResponse,
        errors=(400, 404, 413, 500, 503, 507),
        error=CohereError,
        tag="Cohere",
    ),
)
