"""Request bodies, validated with pydantic. Field errors become one clear 400 message."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from mlx_serve.errors import ApiError, bad_request, model_not_found

Input = str | list[int]


class EmbeddingRequest(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do: clients send extras such as `user`.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: list[Input]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: str | None = None

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


def parse_embedding_request(body: dict[str, Any], max_inputs: int) -> EmbeddingRequest:
    model = body.get("model")
    if model is None or model == "":
        raise ApiError(
            404, "No model given: set `model` to one of the models `GET /v1/models` lists.", "model_not_found", "model"
        )
    try:
        request = EmbeddingRequest.model_validate(body)
    except ValidationError as exc:
        raise _as_api_error(exc) from None
    if len(request.input) > max_inputs:
        raise bad_request(
            f"too many inputs: {len(request.input)} (the limit is {max_inputs})", "too_many_inputs", "input"
        )
    return request


def _as_api_error(exc: ValidationError) -> ApiError:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "body"
    message = err["msg"].removeprefix("Value error, ")
    if not message.startswith(field):
        message = f"{field}: {message}"
    if field == "encoding_format":
        message = f"encoding_format must be 'float' or 'base64', not {err.get('input')!r}"
    return bad_request(message, f"invalid_{field}", field)


__all__ = ["EmbeddingRequest", "model_not_found", "parse_embedding_request"]
