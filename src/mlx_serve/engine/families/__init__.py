"""The model families this server runs, one module each, as mlx-lm's `models/` are: a family says which
`model_type`s it takes, what it refuses (in one sentence), how it loads a folder as an embedding model, a
reranker or a classifier, and what it does to a folder when it is pulled. The loader and the pull look a
family up by config.json's `model_type`; they never branch on it.

A model the server cannot run faithfully is refused when it is pulled, never served approximately: a
decoder run as the wrong architecture, or without the attention its config asks for, gives vectors at
cosine -0.16 to the real ones with status 200.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlx_serve.core.types import ModelType

if TYPE_CHECKING:
    import mlx.core as mx

    from mlx_serve.engine.st_layout import Layout

# The family modules, in the order the refusal sentence lists them.
MODULES = ("bert", "modernbert", "qwen3", "gemma3")
WHY_NOT = {
    "nomic_bert": "NomicBERT (nomic-embed-text) runs code of its own from the Hugging Face Hub "
    "(trust_remote_code), with no reference implementation in transformers to check a port against",
}


class UnsupportedArchitecture(ValueError):
    """A folder this server cannot run faithfully: the message is one sentence naming what and why."""


@dataclass(frozen=True)
class LoadContext:
    """Everything a family needs to build a model from a folder."""

    name: str
    path: Path
    config: dict[str, Any]
    type: ModelType
    layout: Layout
    dtype: Callable[[mx.Dtype], mx.Dtype]  # the compute dtype, from the checkpoint's
    streams: list[mx.Stream]
    native_cpu: bool  # kernels compiled for this CPU (cpu/jit.py)
    instruction: str | None = None  # a query task replacing the model's default (Qwen3)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: frozenset[str]
    described: str  # for the refusal sentence: "BERT (all-MiniLM-L6-v2, ...)"
    load: Callable[[LoadContext], Any]  # -> an Embedder, Reranker or Classifier
    check: Callable[[dict[str, Any], ModelType], None] = lambda config, type: None  # raises in one sentence
    convert: Callable[[Path, dict[str, Any], ModelType, int | None], dict[str, Any]] | None = None  # at pull
    default_pooling: str = "mean"  # without sentence-transformers files
    quantizable: bool = False
    float16: bool = True  # False: its activations pass float16's range; never run in it
    types: frozenset[ModelType] = field(default_factory=lambda: frozenset({"embedding", "reranker", "classifier"}))


def families() -> list[Family]:
    return [importlib.import_module(f"{__name__}.{module}").FAMILY for module in MODULES]


def supported() -> str:
    return ", ".join(f.described for f in families())


def model_type(config: dict[str, Any]) -> str:
    return str(config.get("model_type", ""))


def lookup(config: dict[str, Any]) -> Family:
    """The family of a folder's config.json, or UnsupportedArchitecture naming it and what this server runs."""
    kind = model_type(config)
    for family in families():
        if kind in family.model_types:
            return family
    archs = ", ".join(config.get("architectures") or []) or kind or "unknown"
    reason = WHY_NOT.get(kind, "is not an architecture this server runs")
    raise UnsupportedArchitecture(
        f"{archs} (model_type {kind or 'missing'!r}): {reason}. This server runs {supported()}."
    )


def check(config: dict[str, Any], type: ModelType) -> Family:
    """The family, once it has said it can serve the folder as `type` (else UnsupportedArchitecture)."""
    family = lookup(config)
    if type not in family.types:
        archs = ", ".join(config.get("architectures") or []) or model_type(config)
        served = " or ".join(sorted(family.types))
        raise UnsupportedArchitecture(f"{archs} ({family.name}) is served as {served}, not as a {type}")
    family.check(config, type)
    return family


def label_count(config: dict[str, Any]) -> int:
    return len(config.get("id2label") or {}) or int(config.get("num_labels", 2))


def check_head(config: dict[str, Any], type: ModelType) -> None:
    """What an encoder's head lets it be: a sequence-classification head reranks (one or two labels) or
    classifies; without one, the encoder embeds."""
    archs = config.get("architectures") or []
    name = archs[0] if archs else model_type(config)
    classifies = any(a.endswith("ForSequenceClassification") for a in archs)
    if type == "embedding" and classifies:
        raise UnsupportedArchitecture(f"{name} is a sequence classifier: it reranks or classifies, it does not embed")
    if type != "embedding" and not classifies:
        verb = "rerank" if type == "reranker" else "classify"
        raise UnsupportedArchitecture(
            f"{name} has no head that scores a text or a pair: it cannot {verb}; "
            "pull it as an embedding model (an embedding model named in a rerank request ranks by cosine similarity)"
        )
    labels = label_count(config)
    if type == "reranker" and (labels > 2 or config.get("problem_type") == "multi_label_classification"):
        raise UnsupportedArchitecture(
            f"{name} has {labels} labels: it is a classifier, not a reranker (pull it with --type classifier)"
        )
