"""The runtime: the `Service` (core/service.py) this server's HTTP layer calls, on MLX.

Request threads never touch MLX: each call becomes a job for the scheduler's inference thread, and the
request thread waits on its future with a deadline. Loaded models live in the cache, one LRU per type.
Tokenizing, and turning rows into answers (normalising, Matryoshka cuts, scores), happen on the request
threads.
"""

from __future__ import annotations

import difflib
import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from cachetools import LRUCache

from mlx_serve.core import client
from mlx_serve.core.errors import ClientClosed, InvalidRequest, ModelNotFound, Overloaded, PreloadError
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
    SparseVector,
    Token,
    TokenizeIntent,
    Tokens,
)
from mlx_serve.core.types import ModelType, Output, Truncation
from mlx_serve.engine import Embedder, Seq, UnsupportedModelError, load_model
from mlx_serve.engine.embedder import normalized
from mlx_serve.engine.loader import HALF, compute_dtype, max_seq_length, read_config
from mlx_serve.engine.reranker import EmbeddingRanker, MaxSimRanker, Reranker
from mlx_serve.engine.st_layout import prompt_for
from mlx_serve.engine.st_layout import read as read_layout
from mlx_serve.engine.tokenizer import TextTokenizer
from mlx_serve.logs import get_logger
from mlx_serve.metrics import Metrics
from mlx_serve.serving import memory
from mlx_serve.serving.cache import ModelCache
from mlx_serve.serving.scheduler import Job, Scheduler, overflowed
from mlx_serve.serving.token_arrays import Cl100kDecoder, resolve
from mlx_serve.settings import Settings
from mlx_serve.store import pull
from mlx_serve.store.store import InvalidNameError, ModelEntry, ModelStore, StoreError

log = get_logger("mlx_serve.serving.runtime")
CLIENT_CHECK = 0.25  # seconds between asking whether a waiting request's client is still there


def finite(*outputs: Any) -> None:
    """The last guard before an answer is built: no NaN or inf leaves as a number (JSON would carry it as
    null with status 200). The scheduler has already run overflowing rows again in float32; this catches
    what comes after, on the host."""
    for out in outputs:
        if isinstance(out, np.ndarray) and out.dtype.kind == "f" and out.size and not np.isfinite(out).all():
            rows = out.reshape(len(out), -1) if out.ndim else out.reshape(1, 1)
            raise overflowed(int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0]), widened=False)
        if isinstance(out, list):  # per input: sparse vectors, or a multi-vector array each
            for index, item in enumerate(out):
                values = item.values if isinstance(item, SparseVector) else item
                if not np.isfinite(values).all():
                    raise overflowed(index, widened=False)


class Runtime:
    def __init__(self, settings: Settings, store: ModelStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.cl100k = Cl100kDecoder()
        # The bound on the activations at once: kept by MLX's memory limit on a GPU, by splitting batches
        # on a CPU (memory.throttles says why).
        self.inflight_bound = memory.inflight_budget(settings.max_inflight_bytes)
        self.throttled = memory.throttles()
        limits = metrics.memory.limits
        self.memory_limit = limits.memory if limits is not None else mx.get_memory_limit()
        self.loaded_bytes = 0
        self.scheduler = Scheduler(
            batch_tokens(settings.max_batch_tokens),
            settings.max_queued_requests,
            metrics,
            on_idle=memory.release_cache,
            idle_after=memory.IDLE_RELEASE_SECONDS,
            max_inflight_bytes=None if self.throttled else self.inflight_bound,
        )
        metrics.memory.inflight = self._inflight
        metrics.memory.inflight_limit = self.inflight_bound
        metrics.shapes_pending.set_function(self.scheduler.background_pending)
        self.cache = ModelCache(
            {
                "embedding": settings.cache_max_embedding_models,
                "reranker": settings.cache_max_reranker_models,
                "classifier": settings.cache_max_classifier_models,
            },
            settings.keep_alive,
            metrics,
            load=self._load,
            release=self._release,
            run_control=self.scheduler.control,
        )
        # Tokenizers for /tokenize and /decode, which need no weights: a few, by folder and files' stamp.
        self._tokenizers: LRUCache[tuple[Path, int], tuple[TextTokenizer, Any]] = LRUCache(maxsize=8)
        # Pulls over HTTP each hold a request thread while they run: a few at once, never all the threads.
        self._pulls = threading.BoundedSemaphore(settings.max_concurrent_pulls)
        self.cache.start()

    # -- the models -------------------------------------------------------------------------------
    def entry(self, name: str) -> ModelEntry:
        """The stored model called `name`, or ModelNotFound naming the near ones and what there is."""
        try:
            entry = self.store.get(name)
        except InvalidNameError:
            entry = None
        if entry is None:
            raise ModelNotFound(not_found(name, [e.name for e in self.store.list()]), param="model")
        return entry

    def models(self) -> list[ModelInfo]:
        return [info(e) for e in self.store.list()]

    def model(self, name: str) -> ModelInfo:
        return info(self.entry(name))

    def default_model(self, type: ModelType, output: Output | None = None) -> ModelInfo:
        """What a request that names no model means (TEI's): the default_* setting, else the only model
        of that type, else a 400 listing the candidates. With `output` (TEI's /embed_sparse), among the
        models that give it."""
        setting = {
            "embedding": self.settings.default_embedding_model,
            "reranker": self.settings.default_reranker,
            "classifier": self.settings.default_classifier,
        }[type]
        if setting and (output is None or output in self.model(setting).outputs):
            return self.model(setting)
        candidates = [m for m in self.models() if m.type == type and (output is None or output in m.outputs)]
        if len(candidates) == 1:
            return candidates[0]
        key = {"embedding": "default_embedding_model", "reranker": "default_reranker"}.get(type, f"default_{type}")
        giving = "" if output is None else f" with a {output} output"
        if not candidates:
            raise InvalidRequest(
                f"no {type} model{giving} is stored; pull one, or name the model (`model`)", param="model"
            )
        names = ", ".join(m.name for m in candidates)
        raise InvalidRequest(
            f"this request names no model and {len(candidates)} {type} models{giving} could be meant ({names}): "
            f"name one (`model`), or set {key}",
            param="model",
        )

    def describe(self, name: str) -> dict[str, Any]:
        """A model's details, as `mlx-serve show` prints them, for an HTTP client: no absolute path of this
        machine (the path is relative to the store, a folder source is its name)."""
        entry = self.entry(name)
        details = self.store.describe(entry)
        path = Path(details["path"])
        details["path"] = str(path.relative_to(self.store.root)) if path.is_relative_to(self.store.root) else None
        if str(details.get("source", "")).startswith("/"):
            details["source"] = f"folder:{Path(details['source']).name}"
        details["dtype"] = str(compute_dtype(self.settings.dtype)).removeprefix("mlx.core.")
        details["auto_truncate"] = self.settings.auto_truncate
        details["max_concurrent_requests"] = self.settings.threads
        return details

    def loaded(self) -> list[LoadedModel]:
        return self.cache.snapshot()

    def memory(self) -> Memory:
        now = memory.usage()
        return Memory(now.active, now.cache, now.peak, self._inflight())

    # -- the control plane ---------------------------------------------------------------------------
    def pull(self, intent: PullIntent) -> Iterator[bytes]:
        """Pull into the store in a child process; its progress lines (store/progress.py), as they come.
        At most `max_concurrent_pulls` at once (each holds a request thread for as long as it runs); a
        pull whose client goes away is cancelled."""
        if not self._pulls.acquire(blocking=False):
            limit = self.settings.max_concurrent_pulls
            raise Overloaded(
                f"{limit} pull{'s are' if limit > 1 else ' is'} running already (max_concurrent_pulls); "
                "retry when one is done"
            )
        try:
            lines = pull.pull_in_child(
                intent.source,
                name=intent.name,
                type=intent.type,
                quantize=intent.quantize,
                timeout=self.settings.pull_timeout,
                replace=intent.replace,
                abandoned=client.watcher(),
            )
        except BaseException:
            self._pulls.release()
            raise
        return Releasing(lines, self._pulls.release)

    def delete(self, name: str) -> None:
        """Remove a stored model; if loaded, it is unloaded after its in-flight requests first. Checked
        before anything is unloaded: a model that cannot be deleted stays loaded."""
        entry = self.entry(name)
        try:
            self.store.check_deletable(entry.name)
        except StoreError as exc:
            raise InvalidRequest(str(exc), code="cannot_delete", param="model") from None
        timeout = self.settings.request_timeout
        if self.cache.request_unload(entry.name) and not self.cache.wait_unloaded(entry.name, timeout):
            raise Overloaded(f"{entry.name} is still in use after {timeout:g} s")
        try:
            self.store.delete(entry.name)
        except StoreError as exc:
            raise InvalidRequest(str(exc), code="cannot_delete", param="model") from None

    def unload(self, name: str) -> bool:
        """Unload `name` once its in-flight requests finish; False if it is not loaded."""
        return self.cache.request_unload(self.entry(name).name)

    # -- on the inference thread ----------------------------------------------------------------
    def _load(self, entry: ModelEntry) -> Any:
        instruction = self.settings.model_instructions.get(entry.name)
        # Its weights on disk count from the start: under a limit set for the models loaded before, MLX
        # would wait for the device after each of this model's arrays as it reads them.
        self._set_limits(sum(f.stat().st_size for f in entry.path.rglob("*.safetensors")))
        try:
            model = load_model(
                entry.name, entry.path, type=entry.type, dtype=self.settings.dtype, instruction=instruction
            )
        except UnsupportedModelError as exc:  # refused in one sentence, never served approximately
            raise InvalidRequest(str(exc), code="unsupported_model", param="model") from None
        self._set_limits(model.nbytes())
        self._warm(entry.name, model)
        return model

    def _warm(self, name: str, model: Any) -> None:
        """Build the model's batch shapes in the background (on a GPU: see BatchRunner.shapes), so that
        the first requests of each length do not pay for it. Dropped if the model unloads first."""
        shapes = model.runner.shapes(self.scheduler.max_batch_tokens, model.max_length)
        if not shapes or not self.settings.warm_shapes:
            return
        ref = weakref.ref(model)
        started = time.monotonic()

        def piece(rows: int, width: int, last: bool) -> None:
            loaded = ref()
            if loaded is None:
                return
            loaded.runner.warm(rows, width, self.scheduler.max_inflight_bytes)
            if last:
                log.info("shapes_built", model=name, shapes=len(shapes), seconds=round(time.monotonic() - started, 2))

        self.scheduler.background(
            [lambda r=r, w=w, i=i: piece(r, w, i == len(shapes) - 1) for i, (r, w) in enumerate(shapes)]
        )

    def _widen(self, entry: ModelEntry, model: Any) -> Callable[[], Any] | None:
        """The model in float32, loaded on first need and kept beside it until it unloads: a model that
        overflowed once in half precision will again."""
        precision = getattr(model, "precision", None)
        if precision is None or precision not in HALF:
            return None

        def widened() -> Any:
            if model.widened is None:
                instruction = self.settings.model_instructions.get(entry.name)
                model.widened = load_model(
                    entry.name, entry.path, type=entry.type, dtype="float32", instruction=instruction
                )
                log.warning("float32_copy_loaded", model=entry.name, bytes=model.widened.nbytes())
                # The copy is resident too: under a limit below the resident memory MLX would wait after every kernel.
                self._set_limits()
            return model.widened

        return widened

    def _release(self) -> None:
        _release_memory()
        self._set_limits()

    def _set_limits(self, loading: int = 0) -> None:
        """Keep the loaded weights wired on Metal (see memory.wired_target), and on a GPU hold the
        activations within the bound above them (memory.throttle)."""
        loaded = self.cache.resident_bytes() + loading
        memory.set_wired(self.settings.mlx_wired_limit, loaded)
        if self.throttled:
            memory.throttle(self.memory_limit, loaded, self.inflight_bound)
        self.loaded_bytes = loaded

    def _inflight(self) -> int:
        """The activations on the device now: on a GPU what MLX holds beyond the weights, on a CPU the
        estimate the batches are split by."""
        if self.throttled:
            return max(0, memory.usage().active - self.loaded_bytes)
        return self.scheduler.inflight_bytes

    # -- request threads --------------------------------------------------------------------------
    def _wait(self, future: Future[Any], deadline: float, job: Job | None = None) -> Any:
        """The future's result by the deadline. Every CLIENT_CHECK seconds the client is asked after: one
        that has gone takes its work with it (still queued, it never runs; see core/client.py)."""
        while True:
            left = deadline - time.monotonic()
            try:
                return future.result(timeout=max(0.0, min(left, CLIENT_CHECK)))
            except FutureTimeout:
                if left <= CLIENT_CHECK:
                    # A queued job never runs; a load (no job) goes on for the next request of its model
                    # (cache.schedule_load), which would otherwise queue it again and wait as long.
                    if job is not None:
                        future.cancel()
                    raise Overloaded(
                        f"The server is busy: no result within {self.settings.request_timeout:g} s."
                    ) from None
                if client.gone():
                    # A load (no job) goes on for the next request of its model; a job is cancelled if
                    # still queued, and stops before its next batch if running.
                    dropped = job is None or future.cancel()
                    if job is not None:
                        job.abandoned = True
                    self.metrics.abandoned.labels("queued" if dropped else "running").inc()
                    raise ClientClosed("the client went away before its answer was ready") from None

    def _submit(
        self,
        entry: ModelEntry,
        prepare: Callable[[Any], list[Seq]],
        finish: Callable[[Any, Any], Any],
        keep_alive: float | None,
        view: Callable[[Any], Any] | None = None,
    ) -> tuple[Any, float]:
        """Lease the model (loading it on the inference thread if needed), tokenize here, run the sequences
        on the inference thread, and turn the rows into the answer here. Also the seconds spent loading."""
        deadline = time.monotonic() + self.settings.request_timeout
        loading = 0.0
        # The lease holds the model from lookup to response: nothing unloads it under this request.
        with self.cache.lease(entry, keep_alive) as slot:
            model = self.cache.ready(slot)
            if model is None:
                started = time.monotonic()
                model = self._wait(self.cache.schedule_load(slot), deadline)
                loading = time.monotonic() - started
            seqs = prepare(model)
            # `view`: what of the model runs (an embedder's other outputs); jobs of one view batch together.
            runner = model if view is None else view(model)
            group = slot if runner is model else (slot, runner.outputs)
            widen = self._widen(entry, model)
            if widen is not None and view is not None:
                widen = (lambda wide: lambda: view(wide()))(widen)
            job = Job(entry.name, group, runner, seqs, widen=widen)
            rows = self._wait(self.scheduler.submit(job), deadline, job)
        result = finish(model, rows)
        finite(*(result if isinstance(result, tuple) else (result,)))
        return result, loading

    def _truncation(self, truncation: Truncation | None) -> Truncation:
        return truncation if truncation is not None else Truncation(enabled=self.settings.auto_truncate)

    def _typed(self, name: str, type: ModelType, route: str) -> ModelEntry:
        entry = self.entry(name)
        if entry.type != type and not (type == "reranker" and entry.type == "embedding"):
            raise InvalidRequest(
                f"{entry.name} is a {entry.type}, not {'an' if type == 'embedding' else 'a'} {type} model; {route}",
                code="invalid_model",
                param="model",
            )
        return entry

    def embed(self, intent: EmbedIntent) -> Embeddings:
        entry = self.entry(intent.model)
        name = entry.name  # an alias answers with the real name
        if entry.type != "embedding":
            use = "use /v1/rerank" if entry.type == "reranker" else "use /predict or /classify"
            raise InvalidRequest(
                f"{name} is a {entry.type}, not an embedding model; {use}", code="invalid_model", param="model"
            )
        missing = [o for o in intent.outputs if o not in entry.outputs]
        if missing:
            raise InvalidRequest(
                f"{name} has no {' or '.join(missing)} output; its outputs: {', '.join(entry.outputs)}",
                code="invalid_outputs",
                param="outputs",
            )
        if intent.input_type == "document" and intent.instruction:
            raise InvalidRequest("an instruction applies to queries, not to input_type 'document'", param="instruction")
        dense_only = [o for o in ("dimensions", "normalize") if getattr(intent, o) is not None]
        if dense_only and "dense" not in intent.outputs:
            raise InvalidRequest(
                f"{dense_only[0]} applies to the dense output, which was not asked for", param=dense_only[0]
            )
        truncation = self._truncation(intent.truncation)
        inputs = resolve(intent.inputs, self.settings.token_arrays, self.cl100k)
        counts: list[int] = []
        seqs: list[Seq] = []
        dimensions = intent.dimensions

        def prepare(model: Embedder) -> list[Seq]:
            if dimensions is not None and not 1 <= dimensions <= model.dimensions:
                raise InvalidRequest(
                    f"dimensions must be between 1 and {model.dimensions} for {name}", param="dimensions"
                )
            seqs.extend(model.tokenize(inputs, intent.instruction, truncation, intent.input_type, intent.prompt_name))
            counts.extend(len(s) for s in seqs)
            return seqs

        def finish(model: Embedder, rows: Any) -> tuple[Any, ...]:
            outputs = model.split(rows, seqs, intent.outputs)
            dense = outputs.get("dense")
            if dense is not None:
                if dimensions is not None and dimensions != model.dimensions:
                    dense = np.ascontiguousarray(dense[:, :dimensions])
                normalize = model.normalize if intent.normalize is None else intent.normalize
                dense = normalized(dense) if normalize else dense
            return dense, outputs.get("sparse"), outputs.get("multivector")

        (dense, sparse, multivector), loading = self._submit(
            entry, prepare, finish, intent.keep_alive, view=lambda model: model.view(intent.outputs)
        )
        self._count(name, counts)
        return Embeddings(name, counts, dense=dense, sparse=sparse, multivector=multivector, load_seconds=loading)

    def rerank(self, intent: RerankIntent) -> Ranking:
        entry = self._typed(intent.model, "reranker", "use /v1/embeddings")
        name = entry.name
        if entry.type == "embedding" and not {"dense", "multivector"} & set(entry.outputs):
            raise InvalidRequest(
                f"{name} gives sparse vectors only: it does not rerank here (score them with your index)",
                code="invalid_model",
                param="model",
            )
        truncation = self._truncation(intent.truncation)
        counts: list[int] = []

        def ranker(model: Any) -> Reranker:
            if not isinstance(model, Embedder):
                return model
            return MaxSimRanker(model) if "multivector" in model.outputs else EmbeddingRanker(model)

        def prepare(model: Any) -> list[Seq]:
            docs = intent.documents
            if intent.max_tokens_per_doc is not None:
                docs = [model.tokenizer.head(d, intent.max_tokens_per_doc) for d in docs]
            seqs = ranker(model).tokenize(intent.query, docs, intent.instruction, truncation)
            counts.extend(len(s) for s in seqs)
            return seqs

        def finish(model: Any, rows: Any) -> tuple[np.ndarray, np.ndarray]:
            return tuple(ranker(model).scores(rows))

        def view(model: Any) -> Any:
            return model.view(ranker(model).outputs) if isinstance(model, Embedder) else model

        (scores, raw), _ = self._submit(entry, prepare, finish, intent.keep_alive, view=view)
        self._count(name, counts)
        return Ranking(name, scores, raw, sum(counts))

    def classify(self, intent: ClassifyIntent) -> Classification:
        entry = self._typed(intent.model, "classifier", "use /v1/embeddings or /v1/rerank")
        truncation = self._truncation(intent.truncation)
        counts: list[int] = []

        def prepare(model: Any) -> list[Seq]:
            seqs = model.tokenize(intent.inputs, truncation)
            counts.extend(len(s) for s in seqs)
            return seqs

        def finish(model: Any, rows: np.ndarray) -> Classification:
            scores, logits = model.scores(rows)
            finite(scores, logits)
            return Classification(entry.name, model.labels, scores, logits, model.multi_label, sum(counts))

        result, _ = self._submit(entry, prepare, finish, intent.keep_alive)
        self._count(entry.name, counts)
        return result

    def _tokenizer(self, entry: ModelEntry) -> tuple[TextTokenizer, Any]:
        """The model's tokenizer and layout, read from its folder (no weights are loaded)."""
        key = (entry.path, entry.stamp)
        found = self._tokenizers.get(key)
        if found is None:
            config = read_config(entry.path)
            found = (
                TextTokenizer(entry.path / "tokenizer.json", max_seq_length(entry.path, config)),
                read_layout(entry.path),
            )
            self._tokenizers[key] = found
        return found

    def tokenize(self, intent: TokenizeIntent) -> Tokens:
        entry = self.entry(intent.model)
        tokenizer, layout = self._tokenizer(entry)
        prompt = prompt_for(layout, intent.prompt_name, None) if intent.prompt_name else None
        texts = [(prompt or "") + text for text in intent.inputs]
        rows = []
        for index, text in enumerate(texts):
            ids, offsets, special = tokenizer.offsets(index, text, intent.add_special_tokens)
            rows.append(
                [
                    Token(i, tokenizer.token_text(i) if sp else text[a:b], sp, None if sp else a, None if sp else b)
                    for i, (a, b), sp in zip(ids, offsets, special, strict=True)
                ]
            )
        return Tokens(entry.name, rows)

    def decode(self, intent: DecodeIntent) -> list[str]:
        entry = self.entry(intent.model)
        tokenizer, _ = self._tokenizer(entry)
        return [tokenizer.decode(i, ids, intent.skip_special_tokens) for i, ids in enumerate(intent.ids)]

    def _count(self, name: str, token_counts: list[int]) -> None:
        self.metrics.tokens.labels(name).inc(sum(token_counts))
        self.metrics.inputs.labels(name).inc(len(token_counts))

    def preload(self, names: Sequence[str]) -> None:
        """Load models before serving; a model that cannot be loaded raises PreloadError naming it. A
        preloaded model is guarded: a request's keep_alive can lengthen its stay, never shorten it."""
        for name in names:
            try:
                entry = self.entry(name)
                self.cache.guard(entry.name)
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
        if self.throttled:
            memory.throttle(self.memory_limit, 0, None)  # the limit as configured


class Releasing:
    """An iterator that calls `release` once, when it is exhausted or closed (the WSGI server closes a
    response it stops sending), whichever comes first."""

    def __init__(self, inner: Iterator[bytes], release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Releasing:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._inner)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
        if self._release is not None:
            release, self._release = self._release, None
            release()


def info(entry: ModelEntry) -> ModelInfo:
    return ModelInfo(
        entry.name,
        entry.type,
        entry.family,
        entry.architecture,
        entry.source,
        entry.created,
        outputs=entry.outputs,
        dimensions=entry.dimensions,
        max_length=entry.max_length,
        labels=entry.labels,
    )


def not_found(name: str, names: list[str]) -> str:
    """`The model 'X' does not exist; did you mean 'Y'?` with the names there are."""
    near = [n for n in names if n.lower() == name.lower() or n.lower() == name.rsplit("/", 1)[-1].lower()]
    near = near or difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return f"The model {name!r} does not exist.{hint} The models here: {shown or 'none'} (`GET /v1/models`)."


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
