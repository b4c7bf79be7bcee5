"""The runtime: everything the HTTP layer calls (embed, rerank, models, ps, unload, delete, pull).

Request threads never touch MLX: each call becomes a job for the scheduler's inference thread, and the
request thread waits on its future with a deadline. Loaded models live in the cache, one LRU per type.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
import numpy as np

from mlx_serve import memory, pull
from mlx_serve.cache import LoadedModel, ModelCache, PreloadError
from mlx_serve.engine import Embedder, Embeddings, InputError, Reranker, Seq, load_model, truncate_dimensions
from mlx_serve.engine.reranker import EmbeddingRanker
from mlx_serve.engine.tokenizer import Truncation
from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics
from mlx_serve.scheduler import InputsTooLarge, Job, QueueFull, Scheduler
from mlx_serve.settings import Settings
from mlx_serve.store import ModelEntry, ModelStore
from mlx_serve.token_arrays import Cl100kDecoder, resolve

log = get_logger("mlx_serve.runtime")
InputType = Literal["query", "document", "classification", "clustering"]


class ModelNotFound(LookupError):
    pass


class InvalidRequest(ValueError):
    """A request the model cannot serve as asked; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class Overloaded(RuntimeError):
    """The request could not be served in time, or the queue is full."""


class TooLarge(RuntimeError):
    """Inputs that do not fit in the device's memory even alone (their indices in the request's own
    sequences); the rest of the batch they came in was served."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(
            f"input {indices[0]} does not fit in the device's memory, even alone; shorten it "
            "(or lower max_batch_tokens if this happens with other requests too)"
        )
        self.indices = indices


@dataclass(frozen=True)
class EmbedResult:
    model: str
    embeddings: Embeddings


@dataclass(frozen=True)
class RerankResult:
    model: str
    scores: np.ndarray  # relevance of each document, in input order
    tokens: int


class Runtime:
    def __init__(self, settings: Settings, store: ModelStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.cl100k = Cl100kDecoder()
        self.scheduler = Scheduler(
            batch_tokens(settings.max_batch_tokens), settings.max_queued_requests, metrics, on_idle=memory.release_cache
        )
        self.cache = ModelCache(
            {"embedding": settings.cache_max_embedding_models, "reranker": settings.cache_max_reranker_models},
            settings.cache_ttl_seconds,
            metrics,
            load=self._load,
            release=self._release,
            run_control=self.scheduler.control,
        )
        self.cache.start()

    # -- lookups (request threads) -------------------------------------------------------------
    def entry(self, name: str) -> ModelEntry:
        entry = self.store.get(name)
        if entry is None:
            raise ModelNotFound(name)
        return entry

    def models(self) -> list[ModelEntry]:
        """Every model this server can serve: the store, plus the built-in one."""
        return self.store.list()

    def describe(self, name: str, public: bool = False) -> dict[str, Any]:
        """A model's details, as `mlx-serve show` prints them. `public`: for an HTTP client, which learns
        no absolute path of this machine (the path is relative to the store, a folder source its name)."""
        details = self.store.describe(self.entry(name))
        if public:
            path = Path(details["path"])
            details["path"] = str(path.relative_to(self.store.root)) if path.is_relative_to(self.store.root) else None
            if str(details.get("source", "")).startswith("/"):
                details["source"] = f"folder:{Path(details['source']).name}"
        return details

    def loaded(self) -> list[str]:
        return self.cache.loaded()

    def ps(self) -> list[LoadedModel]:
        return self.cache.snapshot()

    def memory_usage(self) -> memory.Usage:
        """What MLX holds now: in arrays, in its buffer cache, and at most so far."""
        return memory.usage()

    def pull(
        self,
        source: str,
        *,
        name: str | None = None,
        type: str | None = None,
        quantize: int | None = None,
        replace: bool = False,
    ) -> Iterator[bytes]:
        """Pull into the store in a child process; its progress lines (pull_progress), as they come."""
        return pull.pull_in_child(
            source, name=name, type=type, quantize=quantize, timeout=self.settings.pull_timeout, replace=replace
        )

    def delete(self, name: str) -> None:
        """Remove a stored model; if loaded, it is unloaded after its in-flight requests first."""
        entry = self.entry(name)
        timeout = self.settings.request_timeout
        if self.cache.request_unload(entry.name) and not self.cache.wait_unloaded(entry.name, timeout):
            raise Overloaded(f"{entry.name} is still in use after {timeout:g} s")
        self.store.delete(entry.name)

    def unload(self, name: str) -> bool:
        """Unload `name` once its in-flight requests finish; False if it is not loaded."""
        return self.cache.request_unload(self.entry(name).name)  # ModelNotFound for an unknown name

    # -- on the inference thread ----------------------------------------------------------------
    def _load(self, entry: ModelEntry) -> Embedder | Reranker:
        instruction = self.settings.model_instructions.get(entry.name)
        model = load_model(entry.name, entry.path, type=entry.type, dtype=self.settings.dtype, instruction=instruction)
        self._wire(model.nbytes())
        return model

    def _release(self) -> None:
        _release_memory()
        self._wire()

    def _wire(self, loading: int = 0) -> None:
        """Keep the loaded weights wired on Metal (see memory.wired_target)."""
        loaded = sum(m.size_bytes for m in self.cache.snapshot()) + loading
        memory.set_wired(self.settings.mlx_wired_limit, loaded)

    # -- request threads --------------------------------------------------------------------------
    def _wait(self, future: Future, deadline: float) -> Any:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()  # if it has not started, it never will
            raise Overloaded(f"no result within {self.settings.request_timeout:g} s") from None

    def _submit(
        self,
        entry: ModelEntry,
        prepare: Callable[[Any], list[Seq]],
        finish: Callable[[Any, np.ndarray], Any],
        keep_alive: float | None,
    ) -> Any:
        """Lease the model (loading it on the inference thread if needed), tokenize here, run the sequences
        on the inference thread, and turn the rows into the answer here."""
        deadline = time.monotonic() + self.settings.request_timeout
        # The lease holds the model from lookup to response: nothing unloads it under this request.
        with self.cache.lease(entry, keep_alive) as slot:
            model = self.cache.ready(slot)
            if model is None:
                model = self._wait(self.cache.schedule_load(slot), deadline)
            try:
                seqs = prepare(model)
            except (InputError, InvalidRequest):
                raise
            except ValueError as exc:  # e.g. an instruction for a model that takes none
                raise InvalidRequest(str(exc), "instruction") from None
            try:
                rows = self._wait(self.scheduler.submit(Job(entry.name, slot, model, seqs)), deadline)
            except QueueFull as exc:
                raise Overloaded(str(exc)) from None
            except InputsTooLarge as exc:
                raise TooLarge(exc.indices) from None
        return finish(model, rows)

    # -- the API ---------------------------------------------------------------------------------
    def embed(
        self,
        name: str,
        inputs: Sequence[str | Sequence[int]],
        *,
        dimensions: int | None = None,
        instruction: str | None = None,
        input_type: InputType | None = None,
        truncate: bool | Truncation | None = None,
        keep_alive: float | None = None,
        prompt_name: str | None = None,
    ) -> EmbedResult:
        entry = self.entry(name)
        name = entry.name  # an alias answers with the real name
        if entry.type != "embedding":
            raise InvalidRequest(f"{name} is a {entry.type}, not an embedding model; use /v1/rerank", "model")
        if input_type == "document" and instruction:
            raise InvalidRequest("an instruction applies to queries, not to input_type 'document'", "instruction")
        truncate = self.settings.auto_truncate if truncate is None else truncate
        inputs = resolve(inputs, self.settings.token_arrays, self.cl100k)
        counts: list[int] = []

        def prepare(model: Embedder) -> list[Seq]:
            if dimensions is not None and not 1 <= dimensions <= model.dimensions:
                raise InvalidRequest(f"dimensions must be between 1 and {model.dimensions} for {name}", "dimensions")
            if prompt_name is not None and prompt_name not in model.layout.prompts:
                known = ", ".join(sorted(model.layout.prompts)) or "none"
                raise InvalidRequest(
                    f"{name} has no prompt named {prompt_name!r} (its prompts: {known})", "prompt_name"
                )
            seqs = model.tokenize(inputs, instruction, truncate, input_type, prompt_name)
            counts.extend(len(s) for s in seqs)
            return seqs

        def finish(model: Embedder, rows: np.ndarray) -> Embeddings:
            if dimensions is not None and dimensions != model.dimensions:
                rows = truncate_dimensions(rows, dimensions, model.normalize)
            return Embeddings(rows, counts)

        embeddings = self._submit(entry, prepare, finish, keep_alive)
        self._count(name, embeddings.token_counts)
        return EmbedResult(name, embeddings)

    def rerank(
        self,
        name: str,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        truncate: bool | None = None,
        max_tokens_per_doc: int | None = None,
        keep_alive: float | None = None,
    ) -> RerankResult:
        entry = self.entry(name)
        name = entry.name
        truncate = self.settings.auto_truncate if truncate is None else truncate
        counts: list[int] = []

        def ranker(model: Embedder | Reranker) -> Reranker:
            return EmbeddingRanker(model) if isinstance(model, Embedder) else model

        def prepare(model: Embedder | Reranker) -> list[Seq]:
            docs = documents
            if max_tokens_per_doc is not None:
                docs = [model.tokenizer.head(d, max_tokens_per_doc) for d in documents]
            seqs = ranker(model).tokenize(query, docs, instruction, truncate)
            counts.extend(len(s) for s in seqs)
            return seqs

        def finish(model: Embedder | Reranker, rows: np.ndarray) -> np.ndarray:
            return ranker(model).scores_from_rows(rows)

        scores = self._submit(entry, prepare, finish, keep_alive)
        self._count(name, counts)
        return RerankResult(name, scores, sum(counts))

    def _count(self, name: str, token_counts: list[int]) -> None:
        self.metrics.tokens.labels(name).inc(sum(token_counts))
        self.metrics.inputs.labels(name).inc(len(token_counts))

    def preload(self, names: Sequence[str]) -> None:
        """Load models before serving; a model that cannot be loaded raises PreloadError naming it."""
        for name in names:
            try:
                entry = self.entry(name)
                if self.settings.preload_pinned:
                    self.cache.pin(entry.name)
                with self.cache.lease(entry) as slot:  # idle from the moment it is loaded: the TTL runs from then
                    # A load may take long (a big model from a slow disk): its own timeout, not a request's.
                    future = self.cache.schedule_load(slot)
                    try:
                        future.result(timeout=self.settings.preload_timeout)
                    except FutureTimeout:
                        raise PreloadError(
                            f"cannot preload model {name!r}: not loaded within preload_timeout "
                            f"({self.settings.preload_timeout:g} s)"
                        ) from None
            except ModelNotFound:
                raise PreloadError(f"cannot preload model {name!r}: no such model") from None
            except PreloadError:
                raise
            except Exception as exc:
                raise PreloadError(f"cannot preload model {name!r}: {exc}") from exc

    def close(self) -> None:
        """Let queued and running work finish, then stop the inference thread."""
        self.cache.close()
        self.scheduler.close()


def batch_tokens(setting: int | None) -> int:
    """The token budget of a forward pass: the setting, or for auto 16384 on a GPU (where a bigger batch
    costs little more time) and 4096 on a CPU (where 4096 was faster than 16384)."""
    if setting is not None:
        return setting
    return 16384 if mx.default_device() == mx.gpu else 4096


def _release_memory() -> None:
    # A model's object graph has cycles: free its arrays now, not at some later GC; then hand MLX's
    # buffer cache back to the system.
    gc.collect()
    mx.clear_cache()
