"""Voyage's API, which the `voyageai` client and litellm's `voyage/` provider speak: the same routes as
OpenAI's embeddings (/v1/embeddings) and Jina's rerank (/v1/rerank), with fields of its own. They are
declared here and mixed into those routes' requests, so that each is acted on, never ignored: Voyage's
client once read our float32 bytes as 1,536 int8 values because `output_dtype` was dropped.

- embeddings: `output_dimension` (= `dimensions`), `output_dtype` (float, int8, uint8, binary, ubinary:
  the same codes as Cohere's), `truncation` (= `truncate`); with base64 (the client's default) the
  quantized bytes are encoded as they are, which is how the client decodes them.
- rerank: `top_k` (= `top_n`), `truncation`; the answer also carries Voyage's `data` and `object`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt

from mlx_serve.core.errors import InvalidRequest


class VoyageEmbedFields(BaseModel):
    output_dimension: StrictInt | None = Field(default=None, ge=1, description="Voyage's name for `dimensions`.")
    output_dtype: Literal["float", "int8", "uint8", "binary", "ubinary"] | None = Field(
        default=None,
        description="Voyage: float32, or compact values (int8/uint8 per dimension, binary/ubinary: packed sign "
        "bits); with base64, their bytes.",
    )
    truncation: StrictBool | None = Field(default=None, description="Voyage's name for `truncate`.")


class VoyageRerankFields(BaseModel):
    top_k: StrictInt | None = Field(default=None, ge=1, description="Voyage's name for `top_n`.")
    truncation: StrictBool | None = Field(default=None, description="Voyage's name for `truncate`.")


def same(ours: Any, theirs: Any, names: tuple[str, str]) -> Any:
    """One value for a field that has two names; both given and different is a 400."""
    if ours is not None and theirs is not None and ours != theirs:
        raise InvalidRequest(f"{names[0]} and {names[1]} say different things; give one", param=names[1])
    return ours if ours is not None else theirs


def voyage_form(body: dict[str, Any]) -> bool:
    """A rerank request as Voyage's client sends it (it always sends these keys, null or not)."""
    return "top_k" in body or "truncation" in body
