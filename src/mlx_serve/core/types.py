"""The words every layer shares: what an input is, how it is cut, what a model is and what it can output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Input = str | list[int]  # a text, or token ids (OpenAI's token arrays)
ModelType = Literal["embedding", "reranker", "classifier"]
MODEL_TYPES: tuple[ModelType, ...] = ("embedding", "reranker", "classifier")
InputType = Literal["query", "document", "classification", "clustering"]
# What an embedding model can give per input: one vector; token-id weights (SPLADE, BGE-M3's sparse head);
# one vector per token (ColBERT, BGE-M3's colbert head).
Output = Literal["dense", "sparse", "multivector"]
OUTPUTS: tuple[Output, ...] = ("dense", "sparse", "multivector")


@dataclass(frozen=True)
class Truncation:
    """How inputs over a length are cut: `side` "end" keeps their start (the usual), "start" keeps their
    end (Cohere's `truncate: START`, TEI's `truncation_direction: left`); `max_tokens` lowers the model's
    maximum for one request (special tokens included). Not `enabled`: an input over the length is an
    error naming it."""

    enabled: bool = True
    side: Literal["end", "start"] = "end"
    max_tokens: int | None = None

    @classmethod
    def of(cls, value: bool | Truncation) -> Truncation:
        return value if isinstance(value, Truncation) else cls(enabled=value)
