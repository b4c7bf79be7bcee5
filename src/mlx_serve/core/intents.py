"""What a dialect asks of the core (intents) and what it gets back (results): plain data, validated by the
dialect before it is built, so that the core never sees a field it would have to ignore."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlx_serve.core.types import Input, InputType, ModelType, Output, Truncation


@dataclass(frozen=True)
class EmbedIntent:
    model: str
    inputs: Sequence[Input]
    dimensions: int | None = None  # Matryoshka: the first k values, renormalised if the model normalises
    instruction: str | None = None  # a query task for instruction-following models (Qwen3)
    input_type: InputType | None = None  # picks the model's prompt (or its query instruction)
    prompt_name: str | None = None  # one of the model's named prompts
    truncation: Truncation | None = None  # None: the server's auto_truncate
    normalize: bool | None = None  # None: as the model's files say; True/False: L2-normalise or not (TEI)
    keep_alive: float | None = None
    outputs: tuple[Output, ...] = ("dense",)


@dataclass(frozen=True)
class RerankIntent:
    model: str
    query: str
    documents: Sequence[str]
    instruction: str | None = None
    truncation: Truncation | None = None
    max_tokens_per_doc: int | None = None
    keep_alive: float | None = None


@dataclass(frozen=True)
class ClassifyIntent:
    model: str
    inputs: Sequence[str | tuple[str, str]]  # texts, or pairs (TEI's /predict takes both)
    truncation: Truncation | None = None
    keep_alive: float | None = None


@dataclass(frozen=True)
class TokenizeIntent:
    model: str
    inputs: Sequence[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


@dataclass(frozen=True)
class DecodeIntent:
    model: str
    ids: Sequence[Sequence[int]]
    skip_special_tokens: bool = True


@dataclass(frozen=True)
class PullIntent:
    source: str  # a hub repo id (owner/name) or a model folder
    name: str | None = None
    type: ModelType | None = None
    quantize: int | None = None
    replace: bool = False


@dataclass(frozen=True)
class SparseVector:
    """Token-id weights: only the non-zero ones, ids ascending (Qdrant's and Milvus's shape)."""

    indices: np.ndarray  # int64
    values: np.ndarray  # float32


@dataclass(frozen=True)
class Embeddings:
    model: str
    token_counts: list[int]  # tokens each input used after truncation, special tokens included
    dense: np.ndarray | None = None  # (N, D) float32
    sparse: list[SparseVector] | None = None
    multivector: list[np.ndarray] | None = None  # per input (tokens, D) float32
    load_seconds: float = 0.0  # spent loading the model for this request (Ollama's load_duration)

    @property
    def tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True)
class Ranking:
    model: str
    scores: np.ndarray  # relevance of each document, in input order, in [0, 1] (cosine: [-1, 1])
    raw: np.ndarray  # the same before the sigmoid: a cross-encoder's logit (TEI's raw_scores)
    tokens: int

    def order(self, top_n: int | None = None) -> list[int]:
        """Document indices, highest score first; equal scores keep document order (a stable sort)."""
        return [int(i) for i in np.argsort(-self.scores, kind="stable")[:top_n]]


@dataclass(frozen=True)
class Classification:
    model: str
    labels: tuple[str, ...]  # id2label, in id order
    scores: np.ndarray  # (N, labels): softmax probabilities, or sigmoids for a multi-label model
    logits: np.ndarray  # (N, labels): the raw scores
    multi_label: bool
    tokens: int


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    special: bool
    start: int | None  # character offsets in the input, None for special tokens
    stop: int | None


@dataclass(frozen=True)
class Tokens:
    model: str
    tokens: list[list[Token]]


@dataclass(frozen=True)
class ModelInfo:
    """A model this server can serve, as the store and its files describe it."""

    name: str
    type: ModelType
    family: str  # config.json's model_type: what the files say the model is (bert, qwen3, ...)
    architecture: str  # config.json's architectures[0], shown to users
    source: str
    created: int  # unix seconds
    outputs: tuple[Output, ...] = ("dense",)
    dimensions: int | None = None
    max_length: int | None = None
    labels: tuple[str, ...] = ()  # a classifier's


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory (`/api/ps`)."""

    name: str
    type: ModelType
    size_bytes: int
    in_flight: int  # requests holding it now
    pinned: bool
    expires_at: float | None  # unix time it unloads if still idle; None: never


@dataclass(frozen=True)
class Memory:
    active: int  # in arrays now
    cache: int  # freed, kept for reuse
    peak: int  # the most active at once since start
    inflight: int = 0  # bytes of batches on the device now (the scheduler's bound)

    def to_dict(self) -> dict[str, int]:
        return {
            "active_bytes": self.active,
            "cache_bytes": self.cache,
            "peak_bytes": self.peak,
            "inflight_bytes": self.inflight,
        }
