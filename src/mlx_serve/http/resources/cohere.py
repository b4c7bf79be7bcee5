"""POST /v2/embed and POST /v2/rerank: Cohere's v2 API, as `cohere.ClientV2` (and langchain-cohere's
CohereRerank and litellm's `cohere/` provider through it) call it; and POST /v1/embed, Cohere's v1 embed
(langchain-cohere's CohereEmbeddings). Errors on these routes take Cohere's shape (errors.py)."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import falcon

from mlx_serve.engine.tokenizer import Truncation
from mlx_serve.http.body import read_json_object
from mlx_serve.http.errors import runtime_errors
from mlx_serve.http.resources.rerank import ranked
from mlx_serve.http.schemas import parse_cohere_embed_request, parse_cohere_rerank_request
from mlx_serve.quantization import quantize
from mlx_serve.runtime import InputType, Runtime

# Cohere's input types -> the model's prompts (st_layout.PROMPT_NAMES: a model without a prompt for one
# embeds the text as it is).
INPUT_TYPES: dict[str, InputType] = {
    "search_query": "query",
    "search_document": "document",
    "classification": "classification",
    "clustering": "clustering",
}


def _meta(version: str = "2", **billed: int) -> dict[str, Any]:
    return {"api_version": {"version": version}, "billed_units": billed}


class CohereEmbedResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int, max_inputs: int, version: str = "2") -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes
        self.max_inputs = max_inputs
        self.version = version  # "1": without embedding_types, v1 answers a plain list of float vectors

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_cohere_embed_request(read_json_object(req, self.max_request_bytes), self.max_inputs)
        req.context.model = request.model
        texts = request.all_texts
        truncate: bool | Truncation | None = None  # the server's auto_truncate
        if request.truncate is not None or request.max_tokens is not None:
            truncate = Truncation(
                enabled=request.truncate != "NONE",
                side="start" if request.truncate == "START" else "end",
                max_tokens=request.max_tokens,
            )
        with runtime_errors(request.model, "texts"):
            result = self.runtime.embed(
                request.model,
                texts,
                dimensions=request.output_dimension,
                input_type=INPUT_TYPES[request.input_type] if request.input_type else None,
                truncate=truncate,
                keep_alive=request.keep_alive,
            )
        tokens = sum(result.embeddings.token_counts)
        req.context.tokens = tokens
        vectors = result.embeddings.vectors
        embeddings: dict[str, Any] = {}
        for kind in dict.fromkeys(request.embedding_types or ["float"]):
            if kind == "float":
                embeddings["float"] = vectors
            elif kind == "base64":  # the float32 bytes, as Cohere's SDK decodes them
                embeddings["base64"] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
            else:
                embeddings[kind] = quantize(vectors, kind)
        floats_only = self.version == "1" and request.embedding_types is None
        resp.media = {
            "id": str(uuid.uuid4()),
            "response_type": "embeddings_floats" if floats_only else "embeddings_by_type",
            "embeddings": vectors if floats_only else embeddings,
            "texts": texts,
            "meta": _meta(self.version, input_tokens=tokens),
        }


class CohereRerankResource:
    def __init__(self, runtime: Runtime, max_request_bytes: int, max_inputs: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes
        self.max_inputs = max_inputs

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_cohere_rerank_request(
            read_json_object(req, self.max_request_bytes), self.max_inputs, self.max_request_bytes
        )
        req.context.model = request.model
        with runtime_errors(request.model, "documents"):
            result = self.runtime.rerank(
                request.model,
                request.query,
                request.texts,
                max_tokens_per_doc=request.max_tokens_per_doc,
                keep_alive=request.keep_alive,
            )
        req.context.tokens = result.tokens
        order = ranked(result.scores, request.top_n)
        resp.media = {
            "id": str(uuid.uuid4()),
            "results": [{"index": i, "relevance_score": float(result.scores[i])} for i in order],
            "meta": _meta(search_units=1, input_tokens=result.tokens),
        }
