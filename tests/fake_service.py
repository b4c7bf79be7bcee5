"""A `Service` (core/service.py) without MLX, for the HTTP tests: routes, schemas, error shapes and security
run against it in milliseconds. It keeps the core's contract (its errors, its checks of names, types,
dimensions and lengths) with arithmetic a test can predict:

- a text is its words, framed by [CLS] and [SEP]: "hello world" is 4 tokens;
- a vector is drawn from a hash of the input, so equal inputs give equal vectors;
- a document's score is the share of the query's words it holds, through a sigmoid.

Every intent it gets is kept in `intents`, so a test can check what a dialect asked of the core."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from mlx_serve.core.errors import InputTooLong, InvalidInput, InvalidRequest, ModelNotFound
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
from mlx_serve.core.types import Input, ModelType, Output, Truncation
from mlx_serve.store import progress

EMBEDDER, RERANKER, CLASSIFIER = "fake-embed", "fake-rerank", "fake-classify"
DIMENSIONS, MAX_LENGTH, VOCABULARY = 16, 32, 30_000
CLS, SEP = 101, 102
CREATED = 1_700_000_000
MODEL_BYTES = 1 << 20


def models() -> dict[str, ModelInfo]:
    common = {"source": "folder:fake", "created": CREATED, "max_length": MAX_LENGTH}
    return {
        EMBEDDER: ModelInfo(
            EMBEDDER,
            "embedding",
            "bert",
            "BertModel",
            outputs=("dense", "sparse", "multivector"),
            dimensions=DIMENSIONS,
            **common,
        ),
        RERANKER: ModelInfo(RERANKER, "reranker", "bert", "BertForSequenceClassification", **common),
        CLASSIFIER: ModelInfo(
            CLASSIFIER,
            "classifier",
            "bert",
            "BertForSequenceClassification",
            labels=("negative", "positive"),
            **common,
        ),
    }


def vector(value: Input, size: int = DIMENSIONS) -> np.ndarray:
    """The fake model's vector of an input: unit length, the same for the same input."""
    seed = int.from_bytes(hashlib.sha256(repr(value).encode()).digest()[:8], "little")
    row = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    return row / np.linalg.norm(row)


def word_id(word: str) -> int:
    return 1000 + int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little") % (VOCABULARY - 1000)


class FakeService:
    def __init__(self) -> None:
        self.catalogue = models()
        self.protected = {EMBEDDER}  # as the built-in model is: it cannot be deleted
        self.intents: list[Any] = []
        self._loaded: dict[str, float | None] = {}  # name -> expires_at
        self._words: dict[int, str] = {CLS: "[CLS]", SEP: "[SEP]"}

    # -- the models ---------------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return sorted(self.catalogue.values(), key=lambda m: m.name)

    def model(self, name: str) -> ModelInfo:
        if name not in self.catalogue:
            names = ", ".join(sorted(self.catalogue))
            raise ModelNotFound(f"The model {name!r} does not exist. The models here: {names}.", param="model")
        return self.catalogue[name]

    def default_model(self, type: ModelType, output: Output | None = None) -> ModelInfo:
        candidates = [m for m in self.models() if m.type == type and (output is None or output in m.outputs)]
        if len(candidates) != 1:
            raise InvalidRequest(f"{len(candidates)} {type} models could be meant: name one", param="model")
        return candidates[0]

    def describe(self, name: str) -> dict[str, Any]:
        info = self.model(name)
        return {
            "name": info.name,
            "path": info.name,
            "type": info.type,
            "family": info.family,
            "architecture": info.architecture,
            "source": info.source,
            "created": info.created,
            "dimensions": info.dimensions,
            "max_length": info.max_length,
            "labels": list(info.labels),
            "size": MODEL_BYTES,
            "digest": "sha256:" + "0" * 64,
            "parameters": 1234,
            "prompts": {"query": "query: "} if info.type == "embedding" else {},
            "dtype": "float32",
        }

    def loaded(self) -> list[LoadedModel]:
        return [
            LoadedModel(name, self.catalogue[name].type, MODEL_BYTES, 0, False, expires)
            for name, expires in sorted(self._loaded.items())
        ]

    def memory(self) -> Memory:
        active = MODEL_BYTES * len(self._loaded)
        return Memory(active, 0, active)

    # -- inference -----------------------------------------------------------------------------------
    def _use(self, name: str, type: ModelType, keep_alive: float | None) -> ModelInfo:
        info = self.model(name)
        if info.type != type:
            raise InvalidRequest(f"{name} is a {info.type}, not a {type} model", code="invalid_model", param="model")
        if keep_alive == 0:  # unload once idle, which a fake is at once
            self._loaded.pop(name, None)
        else:  # None: the fake's default, until unloaded; negative: until unloaded
            self._loaded[name] = None if keep_alive is None or keep_alive < 0 else time.time() + keep_alive
        return info

    def _tokens(self, index: int, value: Input, truncation: Truncation | None, max_length: int) -> list[int]:
        if isinstance(value, str):
            ids = [word_id(word) for word in value.split()]
            self._words.update(zip(ids, value.split(), strict=True))
        else:
            ids = list(value)
            if any(not 0 <= i < VOCABULARY for i in ids):
                raise InvalidInput(f"holds a token id outside the vocabulary (0-{VOCABULARY - 1})", index=index)
        truncation = truncation or Truncation()
        limit = min(max_length, truncation.max_tokens or max_length) - 2
        if len(ids) > limit:
            if not truncation.enabled:
                raise InputTooLong(f"has {len(ids) + 2} tokens, more than the {limit + 2} it may have", index=index)
            ids = ids[:limit] if truncation.side == "end" else ids[len(ids) - limit :]
        return [CLS, *ids, SEP]

    def embed(self, intent: EmbedIntent) -> Embeddings:
        self.intents.append(intent)
        info = self._use(intent.model, "embedding", intent.keep_alive)
        missing = [o for o in intent.outputs if o not in info.outputs]
        if missing:
            raise InvalidRequest(f"{info.name} has no {' or '.join(missing)} output", param="outputs")
        size = info.dimensions or DIMENSIONS
        if intent.dimensions is not None and not 1 <= intent.dimensions <= size:
            raise InvalidRequest(f"dimensions must be between 1 and {size} for {info.name}", param="dimensions")
        tokens = [
            self._tokens(i, x, intent.truncation, info.max_length or MAX_LENGTH) for i, x in enumerate(intent.inputs)
        ]
        counts = [len(t) for t in tokens]
        out: dict[str, Any] = {}
        if "dense" in intent.outputs:
            rows = np.stack([vector(x) for x in intent.inputs])[:, : intent.dimensions or size]
            if intent.normalize is not False:
                rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
            out["dense"] = np.ascontiguousarray(rows, dtype=np.float32)
        if "sparse" in intent.outputs:
            out["sparse"] = [self._sparse(t) for t in tokens]
        if "multivector" in intent.outputs:
            out["multivector"] = [np.stack([vector(i) for i in t[1:-1] or [SEP]]) for t in tokens]
        return Embeddings(info.name, counts, **out)

    @staticmethod
    def _sparse(tokens: list[int]) -> SparseVector:
        ids = np.array(sorted(set(tokens[1:-1])), dtype=np.int64)
        return SparseVector(ids, np.array([1.0 + (i % 7) / 7 for i in ids], dtype=np.float32))

    def rerank(self, intent: RerankIntent) -> Ranking:
        self.intents.append(intent)
        info = self._use(intent.model, "reranker", intent.keep_alive)
        query = set(intent.query.lower().split())
        shares, tokens = [], 0
        for i, document in enumerate(intent.documents):
            tokens += len(self._tokens(i, f"{intent.query} {document}", intent.truncation, 10**6)) - 1
            words = set(document.lower().split())
            shares.append(len(query & words) / max(1, len(query)))
        raw = np.array([8 * s - 4 for s in shares], dtype=np.float32)
        return Ranking(info.name, (1 / (1 + np.exp(-raw))).astype(np.float32), raw, tokens)

    def classify(self, intent: ClassifyIntent) -> Classification:
        self.intents.append(intent)
        info = self._use(intent.model, "classifier", intent.keep_alive)
        logits = np.stack([vector(x, len(info.labels)) * 3 for x in intent.inputs])
        scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        tokens = sum(
            len(self._tokens(i, " ".join(x) if isinstance(x, tuple) else x, intent.truncation, MAX_LENGTH))
            for i, x in enumerate(intent.inputs)
        )
        return Classification(info.name, info.labels, scores.astype(np.float32), logits, False, tokens)

    def tokenize(self, intent: TokenizeIntent) -> Tokens:
        self.intents.append(intent)
        info = self.model(intent.model)
        rows = []
        for text in intent.inputs:
            row = [Token(CLS, "[CLS]", True, None, None)] if intent.add_special_tokens else []
            start = 0
            for word in text.split():
                start = text.index(word, start)
                row.append(Token(word_id(word), word, False, start, start + len(word)))
                self._words[word_id(word)] = word
                start += len(word)
            if intent.add_special_tokens:
                row.append(Token(SEP, "[SEP]", True, None, None))
            rows.append(row)
        return Tokens(info.name, rows)

    def decode(self, intent: DecodeIntent) -> list[str]:
        self.intents.append(intent)
        self.model(intent.model)
        texts = []
        for index, ids in enumerate(intent.ids):
            if any(i not in self._words for i in ids):
                raise InvalidInput("holds a token id this fake never gave out", index=index)
            kept = [i for i in ids if not (intent.skip_special_tokens and i in (CLS, SEP))]
            texts.append(" ".join(self._words[i] for i in kept))
        return texts

    # -- the control plane -----------------------------------------------------------------------------
    def unload(self, name: str) -> bool:
        self.model(name)
        return self._loaded.pop(name, False) is not False

    def delete(self, name: str) -> None:
        self.model(name)
        if name in self.protected:
            raise InvalidRequest(f"{name} is built in and cannot be deleted", code="cannot_delete", param="model")
        self._loaded.pop(name, None)
        del self.catalogue[name]

    def pull(self, intent: PullIntent) -> Iterator[bytes]:
        self.intents.append(intent)
        name = intent.name or intent.source.rstrip("/").rsplit("/", 1)[-1]
        yield progress.encode(progress.Progress("pulling", 0, 100))
        if "missing" in intent.source:
            yield progress.encode_error(f"no model at {intent.source!r}")
            return
        self.catalogue[name] = ModelInfo(
            name,
            intent.type or "embedding",
            "bert",
            "BertModel",
            intent.source,
            CREATED,
            dimensions=DIMENSIONS,
            max_length=MAX_LENGTH,
        )
        yield progress.encode(progress.Progress("pulling", 100, 100))
        yield progress.encode(progress.Progress("success"))
