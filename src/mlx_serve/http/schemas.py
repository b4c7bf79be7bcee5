"""Request and response bodies as pydantic models: they validate every request at the boundary (a field
error becomes one clear 400) and they are the OpenAPI document's schemas (openapi.py)."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    model_validator,
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


Document = str | dict[str, Any]


def _documents(value: Any) -> list[Document]:
    """Strings or objects (Jina and Cohere both); which of an object's fields are ranked is `rank_fields`'s
    business (document_texts)."""
    if not isinstance(value, list):
        raise ValueError('documents must be a list of strings or {"text": ...} objects')
    if not value:
        raise ValueError("documents must not be empty")
    for i, doc in enumerate(value):
        if not isinstance(doc, (str, dict)):
            raise ValueError(f"documents[{i}] must be a string or an object, not {_json_type(doc)}")
        if not doc:
            raise ValueError(f"documents[{i}] is empty")
    return value


MAX_RANK_FIELDS = 16


def _rank_fields(value: Any) -> Any:
    """Each field once (a list that repeats one field would build each document's text again per copy),
    and a few of them: rank fields name a document's parts, not its data."""
    if not isinstance(value, list):
        return value
    unique = list(dict.fromkeys(value)) if all(isinstance(v, str) for v in value) else value
    if len(unique) > MAX_RANK_FIELDS:
        raise ValueError(f"rank_fields names {len(unique)} fields; at most {MAX_RANK_FIELDS} are taken")
    return unique


def document_texts(documents: list[Document], rank_fields: list[str] | None) -> list[str]:
    """The text ranked for each document: a string as it is; an object's `text`, or with `rank_fields` those
    fields as `field: value` lines, in that order (Cohere's advice for structured documents: YAML-like
    text). A field missing from one document is left out of its text."""
    texts = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            texts.append(doc)
            continue
        if rank_fields is None:
            text = doc.get("text")
            if not isinstance(text, str) or not text:
                raise ValueError(f"documents[{i}] has no string `text`; name the fields to rank in `rank_fields`")
            texts.append(text)
            continue
        lines = [f"{field}: {_field_text(doc[field])}" for field in rank_fields if field in doc]
        if not lines:
            raise ValueError(f"documents[{i}] has none of the rank_fields {rank_fields}")
        texts.append("\n".join(lines))
    return texts


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


Documents = Annotated[
    list[Document],
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
    # A prompt of the model's own (sentence-transformers' prompts: `GET /api/show` lists them).
    prompt_name: str | None = Field(default=None, min_length=1)
    truncate: StrictBool | None = None
    keep_alive: KeepAlive = None


class _Ranking(_Request):
    """What every rerank route takes: a query, documents (strings or objects, ranked by `rank_fields`), and
    how many results."""

    model: ModelName
    query: str = Field(min_length=1)
    documents: Documents
    # Cohere: which fields of object documents are ranked (default: `text`).
    rank_fields: Annotated[list[str], BeforeValidator(_rank_fields)] | None = Field(
        default=None, min_length=1, max_length=MAX_RANK_FIELDS
    )
    top_n: StrictInt | None = Field(default=None, ge=1)
    # Cohere: documents are cut to this many tokens before ranking.
    max_tokens_per_doc: StrictInt | None = Field(default=None, ge=1)
    keep_alive: KeepAlive = None
    _texts: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _rankable(self) -> _Ranking:
        self._texts = document_texts(self.documents, self.rank_fields)
        return self

    @property
    def texts(self) -> list[str]:
        """The text ranked for each document."""
        return self._texts


class RerankRequest(_Ranking):
    """POST /v1/rerank and /rerank (Jina, Cohere v1, Infinity)."""

    return_documents: StrictBool = False
    # A yes/no verdict per document at a threshold.
    return_text: StrictBool = False
    decision_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    instruction: str | None = None
    truncate: StrictBool | None = None


class CohereEmbedText(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None


class CohereEmbedInput(BaseModel):
    content: list[CohereEmbedText] = Field(min_length=1)


CohereInputType = Literal["search_query", "search_document", "classification", "clustering"]
EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]


class CohereEmbedRequest(_Request):
    """POST /v2/embed, as Cohere's v2 API and SDK (`cohere.ClientV2.embed`) send it."""

    model: ModelName
    input_type: CohereInputType | None = None
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    images: list[str] | None = None
    inputs: list[CohereEmbedInput] | None = Field(default=None, min_length=1)
    embedding_types: list[EmbeddingType] | None = Field(default=None, min_length=1)
    truncate: Literal["NONE", "START", "END"] | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    output_dimension: StrictInt | None = Field(default=None, ge=1)
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


class CohereRerankRequest(_Ranking):
    """POST /v2/rerank, as `cohere.ClientV2.rerank` sends it (`rank_fields` for object documents, as on v1)."""


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
    replace: StrictBool = Field(default=False, description="Take over a name that means another model.")
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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    type: Literal["embedding", "reranker"]
    architecture: str | None = None


class CohereError(BaseModel):
    """Errors on the Cohere routes (/v2/*), in Cohere's shape."""

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


class ReadyStatus(BaseModel):
    status: Literal["preloading", "ready", "draining"] = Field(
        description="ready: 200; preloading (preload_models still loading) or draining (a stop has begun): 503"
    )


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
    prompts: dict[str, str] = Field(default_factory=dict, description="named prompts, for prompt_name")


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


def parse_rerank_request(body: dict[str, Any], max_inputs: int, max_bytes: int) -> RerankRequest:
    _require_model(body)
    request = validate(RerankRequest, body)
    _too_many(len(request.documents), max_inputs, "documents", "documents")
    _texts_fit(request.texts, max_bytes)
    return request


def _texts_fit(texts: list[str], max_bytes: int) -> None:
    """What a request builds is bounded as its body is: documents' texts made from their fields (and
    returned with return_documents) may not come to more than max_request_bytes."""
    size = sum(len(t) for t in texts)
    if size > max_bytes:
        raise ApiError(
            413,
            f"the documents' texts come to {size} characters, over the limit of {max_bytes} (max_request_bytes)",
            "payload_too_large",
            "documents",
        )


def parse_cohere_embed_request(body: dict[str, Any], max_inputs: int) -> CohereEmbedRequest:
    _require_model(body)
    request = validate(CohereEmbedRequest, body)
    _too_many(len(request.all_texts), max_inputs, "texts", "texts")
    return request


def parse_cohere_rerank_request(body: dict[str, Any], max_inputs: int, max_bytes: int) -> CohereRerankRequest:
    _require_model(body)
    request = validate(CohereRerankRequest, body)
    _too_many(len(request.documents), max_inputs, "documents", "documents")
    _texts_fit(request.texts, max_bytes)
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
    message = err["msg"].removeprefix("Value error, ")
    # A check across fields (a model validator) has no location: its message starts with the field's name.
    named = re.match(r"([a-z_]+)[\[:]", message)
    field = str(err["loc"][0]) if err["loc"] else named.group(1) if named else "body"
    field = "as" if field == "as_" else field
    if err["type"] == "literal_error":
        message = f"{field} must be {err['ctx']['expected']}, not {_shown(err.get('input'))}"
    elif not message.startswith(field):
        message = f"{field}: {message}"
    return bad_request(message, f"invalid_{field}", field)


def _shown(value: Any) -> str:
    return "null" if value is None else repr(value)
