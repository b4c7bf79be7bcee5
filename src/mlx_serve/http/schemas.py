"""Request bodies, validated with pydantic. Field errors become one clear 400 message."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from mlx_serve.http.errors import ApiError, bad_request, model_not_found

Input = str | list[int]


class EmbeddingRequest(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do: clients send extras such as `user`.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: list[Input]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: str | None = None
    # Extensions for instruction-following models (Qwen3-Embedding): `query` applies the model's default
    # task, `document` none; `instruction` sets the task explicitly.
    input_type: Literal["query", "document"] | None = None
    instruction: str | None = None
    truncate: StrictBool | None = None
    keep_alive: float | None = None  # seconds this model stays loaded once idle (Ollama's); negative: forever

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list[Input]:
        """A string, a list of strings, a token array, or a list of token arrays -> a list of inputs."""
        if value is None:
            raise ValueError("input must not be null")
        if isinstance(value, str) or (isinstance(value, list) and value and all(_is_token(t) for t in value)):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("input must be a string, a list of strings, or token arrays")
        if not value:
            raise ValueError("input must not be empty")
        for i, item in enumerate(value):
            if isinstance(item, str):
                if not item:
                    raise ValueError(f"input[{i}] is an empty string")
            elif isinstance(item, list):
                if not item:
                    raise ValueError(f"input[{i}] is an empty token array")
                if not all(_is_token(t) for t in item):
                    raise ValueError(f"input[{i}] must be a string or an array of integer token ids")
            else:
                raise ValueError(f"input[{i}] must be a string or an array of integer token ids, not {_kind(item)}")
        return value


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    query: str = Field(min_length=1)
    documents: list[str]
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: StrictBool = False
    # The plan's extensions: a yes/no verdict per document at a threshold.
    return_text: StrictBool = False
    decision_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    instruction: str | None = None
    truncate: StrictBool | None = None
    keep_alive: float | None = None

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any) -> list[str]:
        """Strings or {"text": ...} objects (Jina/Cohere both), never empty."""
        if not isinstance(value, list):
            raise ValueError('documents must be a list of strings or {"text": ...} objects')
        if not value:
            raise ValueError("documents must not be empty")
        out = []
        for i, doc in enumerate(value):
            if isinstance(doc, dict) and isinstance(doc.get("text"), str):
                doc = doc["text"]
            if not isinstance(doc, str):
                raise ValueError(f"documents[{i}] must be a string or an object with a string `text`, not {_kind(doc)}")
            out.append(doc)
        return out


class NameRequest(BaseModel):
    """Bodies of the Ollama-style control endpoints: `{"name": ...}` (Ollama also accepts `model`)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)


def parse_name_request(body: dict[str, Any]) -> NameRequest:
    if "name" not in body and isinstance(body.get("model"), str):
        body = {**body, "name": body["model"]}
    try:
        return NameRequest.model_validate(body)
    except ValidationError as exc:
        raise _as_api_error(exc) from None


def _require_model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None or model == "":
        raise ApiError(
            404, "No model given: set `model` to one of the models `GET /v1/models` lists.", "model_not_found", "model"
        )


def _too_many(count: int, limit: int, what: str, param: str) -> None:
    if count > limit:
        raise bad_request(f"too many {what}: {count} (the limit is {limit})", "too_many_inputs", param)


def parse_embedding_request(body: dict[str, Any], max_inputs: int) -> EmbeddingRequest:
    _require_model(body)
    try:
        request = EmbeddingRequest.model_validate(body)
    except ValidationError as exc:
        raise _as_api_error(exc) from None
    _too_many(len(request.input), max_inputs, "inputs", "input")
    return request


def parse_rerank_request(body: dict[str, Any], max_inputs: int) -> RerankRequest:
    _require_model(body)
    try:
        request = RerankRequest.model_validate(body)
    except ValidationError as exc:
        raise _as_api_error(exc) from None
    _too_many(len(request.documents), max_inputs, "documents", "documents")
    return request


def _as_api_error(exc: ValidationError) -> ApiError:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "body"
    message = err["msg"].removeprefix("Value error, ")
    if not message.startswith(field):
        message = f"{field}: {message}"
    if field == "encoding_format":
        message = f"encoding_format must be 'float' or 'base64', not {err.get('input')!r}"
    elif field == "input_type":
        message = f"input_type must be 'query' or 'document', not {err.get('input')!r}"
    return bad_request(message, f"invalid_{field}", field)


__all__ = [
    "EmbeddingRequest",
    "NameRequest",
    "RerankRequest",
    "model_not_found",
    "parse_embedding_request",
    "parse_name_request",
    "parse_rerank_request",
]
