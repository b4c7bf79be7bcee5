"""Request and response bodies as pydantic models: they validate every request at the boundary (a field
error becomes one clear 400) and they are the OpenAPI document's schemas (openapi.py)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    WithJsonSchema,
)

from mlx_serve.http.errors import ApiError, bad_request

Input = str | list[int]
MAX_KEEP_ALIVE = 365 * 24 * 3600.0  # a year: longer is "until unloaded", which a negative value says
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """Seconds a model stays loaded once idle, as Ollama takes it: a number of seconds, or a duration
    such as "10m", "1h30m", "300ms"; negative means until unloaded (-1 is returned)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError('must be a number of seconds or a duration such as "10m"')
    if isinstance(value, str):
        value = _duration_seconds(value.strip())
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError("must be a finite number of seconds")
    if seconds < 0:
        return -1.0
    if seconds > MAX_KEEP_ALIVE:
        raise ValueError(f"must be at most {MAX_KEEP_ALIVE:.0f} seconds (a year); a negative value keeps it loaded")
    return seconds


def _duration_seconds(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # "300", "-1"
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise ValueError(f'{text!r} is not a duration (examples: "30s", "10m", "1h30m", "-1")')
    return sign * total


KeepAlive = Annotated[
    float | None,
    BeforeValidator(parse_keep_alive),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}],
            "description": 'Seconds, or a duration such as "10m"; negative: keep until unloaded.',
        }
    ),
]


def _inputs(value: Any) -> list[Input]:
    """A string, a list of strings, a token array, or a list of token arrays -> a list of inputs."""
    if value is None:
        raise ValueError("input must not be null")
    if isinstance(value, str) or (isinstance(value, list) and value and all(_is_token(t) for t in value)):
        value = [value]
    out: list[Input] = []
    if not isinstance(value, list):
        raise ValueError("input must be a string, a list of strings, or token arrays")
    if not value:
        raise ValueError("input must not be empty")
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise ValueError(f"input[{i}] is an empty string")
            out.append(item)
        elif isinstance(item, list):
            if not item:
                raise ValueError(f"input[{i}] is an empty token array")
            if not all(_is_token(t) for t in item):
                raise ValueError(f"input[{i}] must be a string or an array of integer token ids")
            out.append([int(t) for t in item])
        else:
            raise ValueError(f"input[{i}] must be a string or an array of integer token ids, not {_json_type(item)}")
    return out


def _is_token(value: Any) -> bool:
    """An integer (JSON Schema counts 7.0 as one too)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", dict: "an object"}.get(
        type(value), type(value).__name__
    )


_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
Inputs = Annotated[
    list[Input],
    BeforeValidator(_inputs),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                _TOKENS,
                {"type": "array", "items": _TOKENS, "minItems": 1},
            ]
        }
    ),
]


def _documents(value: Any) -> list[str]:
    """Strings or {"text": ...} objects (Jina and Cohere both), none empty."""
    if not isinstance(value, list):
        raise ValueError('documents must be a list of strings or {"text": ...} objects')
    if not value:
        raise ValueError("documents must not be empty")
    out = []
    for i, doc in enumerate(value):
        if isinstance(doc, dict) and isinstance(doc.get("text"), str):
            doc = doc["text"]
        if not isinstance(doc, str):
            raise ValueError(
                f"documents[{i}] must be a string or an object with a string `text`, not {_json_type(doc)}"
            )
        if not doc:
            raise ValueError(f"documents[{i}] is an empty string")
        out.append(doc)
    return out


Documents = Annotated[
    list[str],
    BeforeValidator(_documents),
    WithJsonSchema(
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "object",
                        "properties": {"text": {"type": "string", "minLength": 1}},
                        "required": ["text"],
                    },
                ]
            },
        }
    ),
]
ModelName = Annotated[str, Field(min_length=1, description="A name from GET /v1/models (or an alias).")]


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do: clients send extras such as `user`.
    model_config = ConfigDict(extra="ignore")


class EmbeddingRequest(_Request):
    model: ModelName
    input: Inputs
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: str | None = None
    # Extensions for instruction-following models (Qwen3-Embedding): `query` applies the model's default
    # task, `document` none; `instruction` sets the task explicitly.
    input_type: Literal["query", "document"] | None = None
    instruction: str | None = None
    truncate: StrictBool | None = None
    keep_alive: KeepAlive = None


class RerankRequest(_Request):
    model: ModelName
    query: str = Field(min_length=1)
    documents: Documents
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: StrictBool = False
    # A yes/no verdict per document at a threshold.
    return_text: StrictBool = False
    decision_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    instruction: str | None = None
    truncate: StrictBool | None = None
    keep_alive: KeepAlive = None


class NameRequest(_Request):
    """Bodies of the Ollama-style endpoints that name a model: `{"name": ...}` (or `model`, as Ollama
    also takes)."""

    name: ModelName | None = None
    model: ModelName | None = None

    @property
    def target(self) -> str:
        return self.name or self.model or ""


class PullRequest(_Request):
    """POST /api/pull: what to pull (`model`, or `name`, as Ollama takes either) and how."""

    model: str | None = Field(default=None, min_length=1, description="A hub repo id or a model folder.")
    name: str | None = Field(default=None, min_length=1, description="Same as `model` (Ollama's older field).")
    as_: str | None = Field(default=None, alias="as", min_length=1, description="The name in the store.")
    type: Literal["embedding", "reranker"] | None = None
    quantize: Literal[4, 8] | None = None
    stream: StrictBool = True

    @property
    def source(self) -> str:
        return self.model or self.name or ""


# -- responses (the OpenAPI document's; the resources write the same shapes as plain dicts) ------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32.")


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None
    text_output: Literal["yes", "no"] | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    type: Literal["embedding", "reranker"]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class MemoryUsage(BaseModel):
    active_bytes: int = Field(description="MLX memory in arrays now (weights and running batches)")
    cache_bytes: int = Field(description="freed MLX buffers kept for reuse")
    peak_bytes: int = Field(description="the most active memory at once since the start")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    models_loaded: list[str]
    memory: MemoryUsage


class LoadedModel(BaseModel):
    name: str
    type: Literal["embedding", "reranker"]
    size_bytes: int
    in_flight: int
    pinned: bool
    expires_at: str | None


class PsResponse(BaseModel):
    models: list[LoadedModel]
    memory: MemoryUsage


class TagDetails(BaseModel):
    architecture: str | None = None
    dimensions: int | None = None
    max_length: int | None = None
    quantization: int | None = None
    source: str | None = None
    revision: str | None = None


class Tag(BaseModel):
    name: str
    model: str
    type: Literal["embedding", "reranker"]
    size: int
    modified_at: str
    details: TagDetails


class TagsResponse(BaseModel):
    models: list[Tag]


class ModelDetails(TagDetails):
    model_config = ConfigDict(extra="allow")

    name: str
    type: Literal["embedding", "reranker"]
    path: str | None = None
    size: int | None = None


class StatusResponse(BaseModel):
    status: str
    name: str | None = None


# -- parsing --------------------------------------------------------------------------------------
def _require_model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None or model == "":
        raise ApiError(
            404, "No model given: set `model` to one of the models `GET /v1/models` lists.", "model_not_found", "model"
        )


def _too_many(count: int, limit: int, what: str, param: str) -> None:
    if count > limit:
        raise bad_request(f"too many {what}: {count} (the limit is {limit})", "too_many_inputs", param)


def validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _as_api_error(exc) from None


def parse_embedding_request(body: dict[str, Any], max_inputs: int) -> EmbeddingRequest:
    _require_model(body)
    request = validate(EmbeddingRequest, body)
    _too_many(len(request.input), max_inputs, "inputs", "input")
    return request


def parse_rerank_request(body: dict[str, Any], max_inputs: int) -> RerankRequest:
    _require_model(body)
    request = validate(RerankRequest, body)
    _too_many(len(request.documents), max_inputs, "documents", "documents")
    return request


def parse_name_request(body: dict[str, Any]) -> str:
    request = validate(NameRequest, body)
    if not request.target:
        raise bad_request("name the model: `name` (or `model`) is required", "invalid_name", "name")
    return request.target


def parse_pull_request(body: dict[str, Any]) -> PullRequest:
    request = validate(PullRequest, body)
    if not request.source:
        raise bad_request(
            "say what to pull: `model` (a hub repo id or a model folder) is required", "invalid_model", "model"
        )
    return request


def _as_api_error(exc: ValidationError) -> ApiError:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "body"
    field = "as" if field == "as_" else field
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        message = f"{field} must be {err['ctx']['expected']}, not {_shown(err.get('input'))}"
    elif not message.startswith(field):
        message = f"{field}: {message}"
    return bad_request(message, f"invalid_{field}", field)


def _shown(value: Any) -> str:
    return "null" if value is None else repr(value)
