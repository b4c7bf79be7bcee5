"""What the HTTP layer needs of the server: the `Service` protocol. The runtime (serving/runtime.py)
implements it with MLX; the tests implement it with a fake, so that every route, schema, error shape and
security check is tested in milliseconds without a model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from mlx_serve.core.intents import (
    Classification,
    ClassifyIntent,
    DecodeIntent,
    Embeddings,
    EmbedIntent,
    LoadedModel,
    Memory,
    ModelInfo,
    PullIntent,
    Ranking,
    RerankIntent,
    TokenizeIntent,
    Tokens,
)
from mlx_serve.core.types import ModelType, Output


class Service(Protocol):
    # Inference. Each raises ModelNotFound, InvalidRequest / InvalidInput (with the input's index),
    # Overloaded, OutOfMemory or NumericalOverflow (core/errors.py).
    def embed(self, intent: EmbedIntent) -> Embeddings: ...
    def rerank(self, intent: RerankIntent) -> Ranking: ...
    def classify(self, intent: ClassifyIntent) -> Classification: ...
    def tokenize(self, intent: TokenizeIntent) -> Tokens: ...
    def decode(self, intent: DecodeIntent) -> list[str]: ...

    # The models.
    def models(self) -> list[ModelInfo]: ...
    def model(self, name: str) -> ModelInfo: ...  # ModelNotFound (with the names there are)
    # For requests that name none (TEI's); with `output`, among the models that give it.
    def default_model(self, type: ModelType, output: Output | None = None) -> ModelInfo: ...
    def describe(self, name: str) -> dict[str, Any]: ...  # every stored detail, no absolute path
    def loaded(self) -> list[LoadedModel]: ...
    def memory(self) -> Memory: ...

    # The control plane.
    def unload(self, name: str) -> bool: ...  # False: it was not loaded
    def delete(self, name: str) -> None: ...
    def pull(self, intent: PullIntent) -> Iterator[bytes]: ...  # progress lines (store/progress.py)
