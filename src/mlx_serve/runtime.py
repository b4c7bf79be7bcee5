"""What the HTTP layer calls: model lookup, loading and inference on one thread that owns all MLX work.

Request threads never touch MLX: they submit work to the inference thread and wait on a future with a
deadline. Loaded models are kept in an LRU cache capped by `cache_max_embedding_models`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from cachetools import LRUCache

from mlx_serve.engine import Embedder, Embeddings, load_embedder
from mlx_serve.engine.embedder import truncate_dimensions
from mlx_serve.engine.tokenizer import Input
from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics
from mlx_serve.settings import Settings
from mlx_serve.store import ModelEntry, ModelStore

log = get_logger("mlx_serve.runtime")


class ModelNotFound(LookupError):
    pass


class InvalidRequest(ValueError):
    """A request the model cannot serve as asked; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class PreloadError(RuntimeError):
    pass


class Overloaded(RuntimeError):
    """The request could not be served in time."""


@dataclass(frozen=True)
class EmbedResult:
    model: str
    embeddings: Embeddings


class Runtime:
    def __init__(self, settings: Settings, store: ModelStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx-inference")
        self._models: LRUCache[str, Embedder] = LRUCache(maxsize=settings.cache_max_embedding_models)
        self._lock = threading.Lock()  # guards _models for readers on request threads

    # -- lookups (request threads) -------------------------------------------------------------
    def entry(self, name: str) -> ModelEntry:
        entry = self.store.get(name)
        if entry is None or entry.type != "embedding":
            raise ModelNotFound(name)
        return entry

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models.keys())

    def dimensions(self, name: str) -> int | None:
        with self._lock:
            model = self._models.get(name)
        return model.dimensions if model else None

    # -- work (runs on the inference thread) --------------------------------------------------
    def _model(self, entry: ModelEntry) -> Embedder:
        with self._lock:
            model = self._models.get(entry.name)
        if model is not None:
            return model
        started = time.perf_counter()
        model = load_embedder(entry.name, entry.path, self.settings.dtype)
        with self._lock:
            self._models[entry.name] = model
            self.metrics.models_loaded.set(len(self._models))
        log.info(
            "model_loaded", model=entry.name, seconds=round(time.perf_counter() - started, 3), bytes=model.nbytes()
        )
        return model

    def _embed(self, entry: ModelEntry, inputs: Sequence[Input], dimensions: int | None) -> Embeddings:
        model = self._model(entry)
        if dimensions is not None and not 1 <= dimensions <= model.dimensions:
            raise InvalidRequest(f"dimensions must be between 1 and {model.dimensions} for {entry.name}", "dimensions")
        started = time.perf_counter()
        result = model.embed(inputs, self.settings.max_batch_tokens)
        self.metrics.inference_seconds.labels(entry.name).observe(time.perf_counter() - started)
        if dimensions is not None and dimensions != model.dimensions:
            result = truncate_dimensions(result, dimensions, model.pooling.normalize)
        return result

    # -- the API ---------------------------------------------------------------------------------
    def _call(self, fn, *args):
        future: Future = self._executor.submit(fn, *args)
        try:
            return future.result(timeout=self.settings.request_timeout)
        except FutureTimeout:
            future.cancel()
            raise Overloaded(f"no result within {self.settings.request_timeout:g} s") from None

    def embed(self, name: str, inputs: Sequence[Input], dimensions: int | None = None) -> EmbedResult:
        entry = self.entry(name)
        embeddings = self._call(self._embed, entry, inputs, dimensions)
        self.metrics.tokens.labels(name).inc(sum(embeddings.token_counts))
        self.metrics.inputs.labels(name).inc(len(embeddings.token_counts))
        return EmbedResult(name, embeddings)

    def preload(self, names: Sequence[str]) -> None:
        """Load models before serving; a model that cannot be loaded raises PreloadError naming it."""
        for name in names:
            try:
                self._call(self._model, self.entry(name))
            except ModelNotFound:
                raise PreloadError(f"cannot preload model {name!r}: no such embedding model") from None
            except Exception as exc:
                raise PreloadError(f"cannot preload model {name!r}: {exc}") from exc

    def close(self) -> None:
        """Let queued and running work finish, then stop the inference thread."""
        self._executor.shutdown(wait=True)
