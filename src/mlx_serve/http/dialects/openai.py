"""OpenAI's embeddings API (/v1/embeddings, also /embeddings): the openai client, langchain-openai,
llama-index, litellm's `openai/` and `hosted_vllm/`, and (with Voyage's own fields, voyage.py) the
voyageai client; and OpenAI's model list (/v1/models)."""

from __future__ import annotations

from typing import Any, Literal

import falcon
from pydantic import BaseModel, Field, StrictBool, StrictInt

from mlx_serve.core.errors import InvalidRequest
from mlx_serve.core.intents import EmbedIntent, ModelInfo
from mlx_serve.core.service import Service
from mlx_serve.core.types import Output, Truncation
from mlx_serve.http.dialects.base import Limits, Operation, Resource, inputs_in, served
from mlx_serve.http.dialects.voyage import VoyageEmbedFields, same
from mlx_serve.http.encodings import as_dtype, base64_rows
from mlx_serve.http.fields import (
    HARMLESS,
    Inputs,
    KeepAlive,
    ModelName,
    StrictRequest,
    parse,
    require_model,
    too_many,
)


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorResponse(BaseModel):
    """Errors in OpenAI's shape (every route but Cohere's, Ollama's and TEI's)."""

    error: ErrorDetail


class EmbeddingRequest(StrictRequest, VoyageEmbedFields):
    model: ModelName
    input: Inputs
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, description=f"OpenAI's end-user id. {HARMLESS}")
    # Instruction-following models (Qwen3-Embedding): `query` applies the model's default task,
    # `document` none; `instruction` sets the task. Other models: the model's prompt for that type.
    input_type: Literal["query", "document"] | None = None
    instruction: str | None = None
    prompt_name: str | None = Field(default=None, min_length=1, description="One of the model's named prompts.")
    truncate: StrictBool | None = None
    keep_alive: KeepAlive = None
    outputs: list[Output] | None = Field(
        default=None,
        min_length=1,
        description='What each item carries: "dense" (`embedding`), "sparse" (`sparse_embedding`), "multivector" '
        "(`multi_vector`); default dense. `GET /v1/models` lists each model's outputs.",
    )


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | list[int] | str | None = Field(
        default=None, description="Floats; base64 of little-endian float32; or Voyage's compact values."
    )
    sparse_embedding: dict[str, list[float] | list[int]] | None = Field(
        default=None, description="{indices, values}: token ids and their weights, the non-zero ones."
    )
    multi_vector: list[list[float]] | None = Field(default=None, description="One vector per token.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    type: Literal["embedding", "reranker", "classifier"]
    architecture: str | None = None
    outputs: list[str] = Field(default_factory=list, description="An embedding model's outputs (see `outputs`).")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


def embed_intent(request: EmbeddingRequest) -> EmbedIntent:
    if request.outputs and "dense" not in request.outputs:
        for name in ("encoding_format", "output_dtype"):  # they shape the dense vector only
            if getattr(request, name) is not None:
                raise InvalidRequest(f"{name} applies to the dense output, which was not asked for", param=name)
    truncate = same(request.truncate, request.truncation, ("truncate", "truncation"))
    return EmbedIntent(
        model=request.model,
        inputs=request.input,
        dimensions=same(request.dimensions, request.output_dimension, ("dimensions", "output_dimension")),
        instruction=request.instruction,
        input_type=request.input_type,
        prompt_name=request.prompt_name,
        truncation=None if truncate is None else Truncation(enabled=truncate),
        keep_alive=request.keep_alive,
        outputs=tuple(dict.fromkeys(request.outputs or ["dense"])),
    )


class EmbeddingsResource(Resource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        require_model(body)
        request = parse(EmbeddingRequest, body)
        too_many(len(request.input), self.limits.max_inputs, "inputs", "input")
        with inputs_in("input"):
            result = self.service.embed(embed_intent(request))
        served(req, result.model, result.tokens)
        items: list[dict[str, Any]] = [{"object": "embedding", "index": i} for i in range(len(result.token_counts))]
        if result.dense is not None:
            rows = as_dtype(result.dense, request.output_dtype or "float")
            encoded: Any = base64_rows(rows) if request.encoding_format == "base64" else rows
            for item, vector in zip(items, encoded, strict=True):
                item["embedding"] = vector
        if result.sparse is not None:
            for item, sparse in zip(items, result.sparse, strict=True):
                item["sparse_embedding"] = {"indices": sparse.indices, "values": sparse.values}
        if result.multivector is not None:
            for item, vectors in zip(items, result.multivector, strict=True):
                item["multi_vector"] = vectors
        resp.media = {
            "object": "list",
            "data": items,
            "model": result.model,
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        }


def card(model: ModelInfo) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": "mlx-serve",
        "type": model.type,
        "architecture": model.architecture or None,
        "outputs": list(model.outputs) if model.type == "embedding" else [],
    }


class ModelsResource(Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"object": "list", "data": [card(m) for m in self.service.models()]}


class ModelResource(Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        resp.media = card(self.service.model(model_id))


def routes(service: Service, limits: Limits) -> dict[str, object]:
    embeddings = EmbeddingsResource(service, limits)
    return {
        "/v1/embeddings": embeddings,
        "/embeddings": embeddings,
        "/v1/models": ModelsResource(service, limits),
        "/v1/models/{model_id:path}": ModelResource(service, limits),
    }


OPERATIONS = (
    Operation(
        "post",
        ("/v1/embeddings", "/embeddings"),
        "Embed texts or token arrays (OpenAI's API; Voyage's fields too)",
        EmbeddingRequest,
        EmbeddingResponse,
        errors=(400, 404, 413, 500, 503, 507),
        tag="OpenAI",
    ),
    Operation("get", ("/v1/models",), "The models this server can serve", response=ModelList, errors=(), tag="OpenAI"),
    Operation(
        "get", ("/v1/models/{model_id}",), "One model (OpenAI's API)", response=ModelCard, errors=(404,), tag="OpenAI"
    ),
)
