"""text-embeddings-inference's API, which huggingface_hub's `InferenceClient`, haystack's TEI components,
llama-index's TextEmbeddingsInference, litellm's `huggingface/`, langchain and the rerankers library call:
POST /embed (and POST /), /embed_sparse, /predict, /rerank with `texts`, /tokenize, /decode, GET /info.
Answers are bare arrays; errors are `{"error", "error_type"}`.

TEI serves one model, so its requests name none. Here a request may name one (`model`, our extension);
otherwise the model is the `default_embedding_model` (or `default_reranker`, `default_classifier`) setting,
else the only model of that type in the store, else a 400 listing the models that could be meant.
"""

from __future__ import annotations

from typing import Any, Literal

import falcon
from pydantic import BaseModel, Field, StrictBool, StrictInt

from mlx_serve import __version__
from mlx_serve.core.errors import InvalidRequest
from mlx_serve.core.intents import ClassifyIntent, DecodeIntent, EmbedIntent, RerankIntent, TokenizeIntent
from mlx_serve.core.service import Service
from mlx_serve.core.types import ModelType, Output, Truncation
from mlx_serve.http.dialects.base import Limits, Operation, Resource, inputs_in, served
from mlx_serve.http.fields import KeepAlive, StrictRequest, parse, texts_field, too_many

Direction = Literal["left", "right", "Left", "Right"]
MODEL = "The model (our extension: TEI serves one). Default: the default model of the route's type."


class TeiError(BaseModel):
    error: str
    error_type: Literal["Validation", "Overloaded", "Backend"]


class TeiEmbedRequest(StrictRequest):
    inputs: texts_field("inputs")  # type: ignore[valid-type]
    model: str | None = Field(default=None, min_length=1, description=MODEL)
    normalize: StrictBool = True
    truncate: StrictBool | None = None
    truncation_direction: Direction = "right"
    prompt_name: str | None = Field(default=None, min_length=1)
    dimensions: StrictInt | None = Field(default=None, ge=1)
    keep_alive: KeepAlive = None


class TeiEmbedSparseRequest(StrictRequest):
    inputs: texts_field("inputs")  # type: ignore[valid-type]
    model: str | None = Field(default=None, min_length=1, description=MODEL)
    truncate: StrictBool | None = None
    truncation_direction: Direction = "right"
    prompt_name: str | None = Field(default=None, min_length=1)
    keep_alive: KeepAlive = None


class TeiRerankRequest(StrictRequest):
    query: str = Field(min_length=1)
    texts: texts_field("texts")  # type: ignore[valid-type]
    model: str | None = Field(default=None, min_length=1, description=MODEL)
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Direction = "right"
    keep_alive: KeepAlive = None


def _predict_inputs(value: Any) -> list[str | tuple[str, str]]:
    """TEI's /predict inputs: a string, a pair [a, b], or a batch of [a] and [a, b]."""
    if isinstance(value, str):
        value = [[value]]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        if len(value) > 2:
            raise ValueError("inputs: a list of strings is one input of one or two texts; send a batch as [[a], [b]]")
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("inputs must be a string, a pair of strings, or a batch of [text] or [text, text]")
    out: list[str | tuple[str, str]] = []
    for i, item in enumerate(value):
        if not (isinstance(item, list) and 1 <= len(item) <= 2 and all(isinstance(t, str) and t for t in item)):
            raise ValueError(f"inputs[{i}] must be [text] or [text, text] of non-empty strings")
        out.append(item[0] if len(item) == 1 else (item[0], item[1]))
    return out


class TeiPredictRequest(StrictRequest):
    inputs: Any = Field(description="A string, a pair [a, b], or a batch of [a] and [a, b].")
    model: str | None = Field(default=None, min_length=1, description=MODEL)
    raw_scores: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Direction = "right"
    keep_alive: KeepAlive = None


class TeiTokenizeRequest(StrictRequest):
    inputs: texts_field("inputs")  # type: ignore[valid-type]
    model: str | None = Field(default=None, min_length=1, description=MODEL)
    add_special_tokens: StrictBool = True
    prompt_name: str | None = Field(default=None, min_length=1)


class TeiDecodeRequest(StrictRequest):
    ids: list[StrictInt] | list[list[StrictInt]] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, description=MODEL)
    skip_special_tokens: StrictBool = True


class Rank(BaseModel):
    index: int
    score: float
    text: str | None = None


class SparseValue(BaseModel):
    index: int
    value: float


class Prediction(BaseModel):
    score: float
    label: str


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TeiInfo(BaseModel):
    model_id: str
    model_sha: str | None
    model_dtype: str
    served_model_name: str
    model_type: dict[str, Any]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None


def _truncation(truncate: bool | None, direction: str) -> Truncation | None:
    side: Literal["end", "start"] = "start" if direction.lower() == "left" else "end"
    if truncate is None and side == "end":
        return None  # the server's auto_truncate
    return Truncation(enabled=True if truncate is None else truncate, side=side)


class TeiResource(Resource):
    model_type: ModelType = "embedding"

    def model(self, name: str | None, output: Output | None = None) -> str:
        """The model named, else the default of this route's type (among those that give `output`)."""
        return name or self.service.default_model(self.model_type, output).name


class EmbedResource(TeiResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        if "query" in body and "texts" in body:  # POST / serves TEI's rerank too
            RerankResource(self.service, self.limits).answer(req, resp, body)
            return
        request = parse(TeiEmbedRequest, body)
        too_many(len(request.inputs), self.limits.max_inputs, "inputs", "inputs")
        intent = EmbedIntent(
            model=self.model(request.model, "dense"),  # a SPLADE model in the store is never meant here
            inputs=request.inputs,
            dimensions=request.dimensions,
            prompt_name=request.prompt_name,
            truncation=_truncation(request.truncate, request.truncation_direction),
            normalize=request.normalize,
            keep_alive=request.keep_alive,
        )
        with inputs_in("inputs"):
            result = self.service.embed(intent)
        served(req, result.model, result.tokens)
        resp.media = result.dense


class EmbedSparseResource(TeiResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse(TeiEmbedSparseRequest, self.body(req))
        too_many(len(request.inputs), self.limits.max_inputs, "inputs", "inputs")
        intent = EmbedIntent(
            model=self.model(request.model, "sparse"),
            inputs=request.inputs,
            prompt_name=request.prompt_name,
            truncation=_truncation(request.truncate, request.truncation_direction),
            keep_alive=request.keep_alive,
            outputs=("sparse",),
        )
        with inputs_in("inputs"):
            result = self.service.embed(intent)
        served(req, result.model, result.tokens)
        assert result.sparse is not None
        resp.media = [
            [{"index": int(i), "value": float(v)} for i, v in zip(s.indices, s.values, strict=True)]
            for s in result.sparse
        ]


class RerankResource(TeiResource):
    model_type = "reranker"

    def answer(self, req: falcon.Request, resp: falcon.Response, body: dict[str, Any]) -> None:
        req.context.dialect = "tei"
        request = parse(TeiRerankRequest, body)
        too_many(len(request.texts), self.limits.max_inputs, "texts", "texts")
        intent = RerankIntent(
            model=self.model(request.model),
            query=request.query,
            documents=request.texts,
            truncation=_truncation(request.truncate, request.truncation_direction),
            keep_alive=request.keep_alive,
        )
        with inputs_in("texts"):
            ranking = self.service.rerank(intent)
        served(req, ranking.model, ranking.tokens)
        scores = ranking.raw if request.raw_scores else ranking.scores
        ranks = []
        for i in ranking.order():
            rank: dict[str, Any] = {"index": i, "score": float(scores[i])}
            if request.return_text:
                rank["text"] = request.texts[i]
            ranks.append(rank)
        resp.media = ranks


class PredictResource(TeiResource):
    model_type = "classifier"

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self.body(req)
        request = parse(TeiPredictRequest, body)
        try:
            inputs = _predict_inputs(request.inputs)
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_inputs", param="inputs") from None
        too_many(len(inputs), self.limits.max_inputs, "inputs", "inputs")
        intent = ClassifyIntent(
            model=self.model(request.model),
            inputs=inputs,
            truncation=_truncation(request.truncate, request.truncation_direction),
            keep_alive=request.keep_alive,
        )
        with inputs_in("inputs"):
            result = self.service.classify(intent)
        served(req, result.model, result.tokens)
        values = result.logits if request.raw_scores else result.scores
        predictions = [
            sorted(
                ({"score": float(s), "label": label} for label, s in zip(result.labels, row, strict=True)),
                key=lambda p: -p["score"],
            )
            for row in values
        ]
        # One input in: one list out, as TEI answers a single string or pair.
        single = isinstance(request.inputs, str) or (
            isinstance(request.inputs, list) and all(isinstance(v, str) for v in request.inputs)
        )
        resp.media = predictions[0] if single else predictions


class TokenizeResource(TeiResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse(TeiTokenizeRequest, self.body(req))
        too_many(len(request.inputs), self.limits.max_inputs, "inputs", "inputs")
        intent = TokenizeIntent(
            self.model(request.model), request.inputs, request.add_special_tokens, request.prompt_name
        )
        with inputs_in("inputs"):
            result = self.service.tokenize(intent)
        req.context.model = result.model
        resp.media = [
            [{"id": t.id, "text": t.text, "special": t.special, "start": t.start, "stop": t.stop} for t in row]
            for row in result.tokens
        ]


class DecodeResource(TeiResource):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse(TeiDecodeRequest, self.body(req))
        ids = request.ids if isinstance(request.ids[0], list) else [request.ids]
        too_many(len(ids), self.limits.max_inputs, "inputs", "ids")
        name = self.model(request.model)
        req.context.model = name
        with inputs_in("ids"):
            resp.media = self.service.decode(DecodeIntent(name, ids, request.skip_special_tokens))  # type: ignore[arg-type]


class InfoResource(TeiResource):
    """GET /info: the model a TEI client's requests go to (`?model=` for another)."""

    def __init__(self, service: Service, limits: Limits, max_batch_tokens: int) -> None:
        super().__init__(service, limits)
        self.max_batch_tokens = max_batch_tokens

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = req.get_param("model")
        if name is None:
            for kind in ("embedding", "reranker", "classifier"):
                try:
                    name = self.service.default_model(kind).name  # type: ignore[arg-type]
                    break
                except InvalidRequest:
                    continue
        if name is None:
            raise InvalidRequest("no model to describe: name one with ?model=", param="model")
        info = self.service.describe(name)
        kind = info["type"]
        if kind == "embedding":
            model_type: dict[str, Any] = {"embedding": {"pooling": info.get("pooling") or "mean"}}
        else:
            labels = info.get("labels") or (["score"] if kind == "reranker" else [])
            model_type = {
                kind: {
                    "id2label": {str(i): label for i, label in enumerate(labels)},
                    "label2id": {label: i for i, label in enumerate(labels)},
                }
            }
        resp.media = {
            "model_id": info.get("source") or name,
            "model_sha": info.get("revision"),
            "model_dtype": info.get("dtype") or "float32",
            "served_model_name": name,
            "model_type": model_type,
            "max_concurrent_requests": info.get("max_concurrent_requests") or 0,
            "max_input_length": info.get("max_length") or 0,
            "max_batch_tokens": self.max_batch_tokens,
            "max_batch_requests": None,
            "max_client_batch_size": self.limits.max_inputs,
            "auto_truncate": bool(info.get("auto_truncate", True)),
            "tokenization_workers": 1,
            "version": __version__,
            "sha": None,
            "docker_label": None,
        }


def routes(service: Service, limits: Limits, max_batch_tokens: int = 0) -> dict[str, object]:
    return {
        "/embed": EmbedResource(service, limits),
        "/embed_sparse": EmbedSparseResource(service, limits),
        "/predict": PredictResource(service, limits),
        "/tokenize": TokenizeResource(service, limits),
        "/decode": DecodeResource(service, limits),
        "/info": InfoResource(service, limits, max_batch_tokens),
    }


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


NUMBERS = _array({"type": "number"})
TEI_ERRORS = (400, 404, 413, 500, 503, 507)


def _op(
    path: str, summary: str, request: Any, schema: dict[str, Any], errors: tuple[int, ...] = TEI_ERRORS
) -> Operation:
    return Operation("post", (path,), summary, request, schema=schema, errors=errors, error=TeiError, tag="TEI")


PREDICTIONS = _array(Prediction.model_json_schema())
RANKS = _array(Rank.model_json_schema())
OPERATIONS = (
    _op("/embed", "Embed texts (TEI's API; POST / too): a bare array of vectors", TeiEmbedRequest, _array(NUMBERS)),
    _op(
        "/embed_sparse",
        "Sparse embeddings (TEI's API): the non-zero {index, value} of each input",
        TeiEmbedSparseRequest,
        _array(_array(SparseValue.model_json_schema())),
    ),
    _op(
        "/predict",
        "Classify texts or pairs (TEI's API): {label, score} per label, best first",
        TeiPredictRequest,
        {"anyOf": [PREDICTIONS, _array(PREDICTIONS)]},
    ),
    _op(
        "/tokenize",
        "Tokens with their offsets (TEI's API)",
        TeiTokenizeRequest,
        _array(_array(SimpleToken.model_json_schema())),
        (400, 404, 413),
    ),
    _op("/decode", "Token ids back to text (TEI's API)", TeiDecodeRequest, _array({"type": "string"}), (400, 404, 413)),
    Operation(
        "get",
        ("/info",),
        "The default model, as TEI describes the one it serves",
        response=TeiInfo,
        errors=(400, 404),
        error=TeiError,
        tag="TEI",
    ),
)
