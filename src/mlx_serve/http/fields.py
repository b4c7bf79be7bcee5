"""What the dialects' request models are made of: a strict base (an unknown field is a 400 naming it), the
inputs, the documents, model names, and the translation of a pydantic error into one clear 400.

The request models double as the OpenAPI document's schemas (openapi.py), so the document cannot drift
from what the server validates.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError, WithJsonSchema

from mlx_serve.core.errors import InvalidRequest, ModelNotFound, PayloadTooLarge
from mlx_serve.core.keep_alive import KeepAlive
from mlx_serve.core.types import Input

__all__ = ["KeepAlive"]

HARMLESS = "Accepted; changes nothing."


class StrictRequest(BaseModel):
    """A request body. A field the server does not act on is refused, never ignored: a misspelt
    `dimension` once answered 200 with 384 dimensions. Fields that real clients send and that change
    nothing are declared, with `HARMLESS` in their description."""

    model_config = ConfigDict(extra="forbid")


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _as_error(exc, model) from None


def require_model(body: dict[str, Any], field: str = "model") -> None:
    """No model named: a 404, as OpenAI answers it."""
    if body.get(field) in (None, ""):
        raise ModelNotFound(f"No model given: set `{field}` to one of the models `GET /v1/models` lists.", param=field)


def too_many(count: int, limit: int, what: str, param: str) -> None:
    if count > limit:
        raise InvalidRequest(
            f"too many {what}: {count} (the limit is {limit}, max_inputs_per_request)",
            code="too_many_inputs",
            param=param,
        )


def _as_error(exc: ValidationError, model: type[BaseModel]) -> InvalidRequest:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    if err["type"] == "extra_forbidden":
        field = ".".join(loc)
        own = set(model.__annotations__)  # the route's own fields first, then those it shares (Voyage's)
        fields = sorted(model.model_fields.items(), key=lambda item: item[0] not in own)
        known = [f.alias or name for name, f in fields] if len(loc) == 1 else []
        near = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.75)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        takes = f" This route takes: {', '.join(known)}." if known else ""
        return InvalidRequest(f"unknown field {field!r}{hint}{takes}", code="unknown_field", param=loc[0])
    message = err["msg"].removeprefix("Value error, ")
    # A check across fields (a model validator) has no location: its message starts with the field's name.
    named = re.match(r"([a-z_]+)[\[:]", message)
    field = loc[0] if loc else named.group(1) if named else "body"
    field = field.rstrip("_")  # `as_`, `float_`: Python names of JSON fields
    if err["type"] == "literal_error":
        message = f"{field} must be {err['ctx']['expected']}, not {_shown(err.get('input'))}"
    elif not message.startswith(field):
        message = f"{field}: {message}"
    return InvalidRequest(message, code=f"invalid_{field}", param=field)


def _shown(value: Any) -> str:
    return "null" if value is None else repr(value)


def _json_type(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", dict: "an object"}.get(
        type(value), type(value).__name__
    )


# -- inputs -------------------------------------------------------------------------------------------
def _is_token(value: Any) -> bool:
    """An integer (JSON Schema counts 7.0 as one too)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def inputs_of(value: Any, name: str = "input", tokens: bool = True) -> list[Input]:
    """A string, a list of strings, (with `tokens`) a token array or a list of them -> a list of inputs."""
    if value is None:
        raise ValueError(f"{name} must not be null")
    if isinstance(value, str) or (tokens and isinstance(value, list) and value and all(_is_token(t) for t in value)):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a string or a list of strings" + (", or token arrays" if tokens else ""))
    if not value:
        raise ValueError(f"{name} must not be empty")
    out: list[Input] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise ValueError(f"{name}[{i}] is an empty string")
            out.append(item)
        elif tokens and isinstance(item, list):
            if not item:
                raise ValueError(f"{name}[{i}] is an empty token array")
            if not all(_is_token(t) for t in item):
                raise ValueError(f"{name}[{i}] must be a string or an array of integer token ids")
            out.append([int(t) for t in item])
        else:
            kind = "a string or an array of integer token ids" if tokens else "a string"
            raise ValueError(f"{name}[{i}] must be {kind}, not {_json_type(item)}")
    return out


_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
Inputs = Annotated[
    list[Input],
    BeforeValidator(inputs_of),
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


def texts_field(name: str) -> Any:
    """A string or a list of non-empty strings (no token arrays), named `name` in errors."""
    return Annotated[
        list[str],
        BeforeValidator(lambda v: inputs_of(v, name, tokens=False)),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                ]
            }
        ),
    ]


# -- documents (rerank) --------------------------------------------------------------------------------
Document = str | dict[str, Any]
MAX_RANK_FIELDS = 16


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


def _rank_fields(value: Any) -> Any:
    """Each field once (a list that repeats one field would build each document's text again per copy),
    and a few of them: rank fields name a document's parts, not its data."""
    if not isinstance(value, list):
        return value
    unique = list(dict.fromkeys(value)) if all(isinstance(v, str) for v in value) else value
    if len(unique) > MAX_RANK_FIELDS:
        raise ValueError(f"rank_fields names {len(unique)} fields; at most {MAX_RANK_FIELDS} are taken")
    return unique


RankFields = Annotated[list[str], BeforeValidator(_rank_fields), Field(min_length=1, max_length=MAX_RANK_FIELDS)]


def document_texts(documents: list[Document], rank_fields: list[str] | None, max_chars: int) -> list[str]:
    """The text ranked for each document: a string as it is; an object's `text`, or with `rank_fields` those
    fields as `field: value` lines, in that order (Cohere's advice for structured documents: YAML-like
    text). A field missing from one document is left out of its text. What is built is bounded as the
    body is: at most `max_chars` in all (413)."""
    texts = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            texts.append(doc)
            continue
        if rank_fields is None:
            text = doc.get("text")
            if not isinstance(text, str) or not text:
                raise InvalidRequest(
                    f"documents[{i}] has no string `text`; name the fields to rank in `rank_fields`",
                    code="invalid_documents",
                    param="documents",
                )
            texts.append(text)
            continue
        lines = [f"{field}: {_field_text(doc[field])}" for field in rank_fields if field in doc]
        if not lines:
            raise InvalidRequest(
                f"documents[{i}] has none of the rank_fields {rank_fields}", code="invalid_documents", param="documents"
            )
        texts.append("\n".join(lines))
    size = sum(len(t) for t in texts)
    if size > max_chars:
        raise PayloadTooLarge(
            f"the documents' texts come to {size} characters, over the limit of {max_chars} (max_request_bytes)",
            param="documents",
        )
    return texts


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


ModelName = Annotated[str, Field(min_length=1, description="A name from GET /v1/models (or an alias).")]


class RankingRequest(StrictRequest):
    """What every rerank route takes: a query, documents (strings or objects, ranked by `rank_fields`), and
    how many results."""

    model: ModelName
    query: str = Field(min_length=1)
    documents: Documents
    # Cohere: which fields of object documents are ranked (default: `text`).
    rank_fields: RankFields | None = None
    top_n: StrictInt | None = Field(default=None, ge=1)
    # Cohere: documents are cut to this many tokens before ranking.
    max_tokens_per_doc: StrictInt | None = Field(default=None, ge=1)
    keep_alive: KeepAlive = None
