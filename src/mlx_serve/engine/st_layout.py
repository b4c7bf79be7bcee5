"""What a model folder's sentence-transformers files say about how its vectors are made: the modules after
the transformer (Pooling, Dense, Normalize, in `modules.json`'s order), `max_seq_length`, and the named
prompts (`config_sentence_transformers.json`). These always win over an architecture's defaults: a model is
served as its own files describe it, or refused.

Reading needs no MLX (pull checks folders with it); `dense_layers` loads the Dense weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_serve.core.errors import InvalidRequest
from mlx_serve.engine.pooling import MODES

# Activations of Dense modules, by the class name sentence-transformers records.
ACTIVATIONS = {"torch.nn.modules.linear.Identity": "identity", "torch.nn.modules.activation.Tanh": "tanh"}
_FLAG_MODES = {  # older configs: one boolean per mode
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "last",
}


class UnsupportedLayout(ValueError):
    """A folder whose sentence-transformers files ask for what this server cannot do faithfully."""


@dataclass(frozen=True)
class Splade:
    """SPLADE's pooling of a masked-LM's logits into one weight per vocabulary entry (sentence-transformers'
    SpladePooling): log(1 + relu(logit)) (`relu`), or that twice (`log1p_relu`, OpenSearch's models);
    the largest over the text's tokens (`max`) or their sum (`sum`)."""

    pooling: str  # "max" or "sum"
    activation: str  # "relu" or "log1p_relu"


@dataclass(frozen=True)
class Dense:
    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # "identity" or "tanh"


@dataclass(frozen=True)
class Layout:
    pooling: tuple[str, ...]  # modes, concatenated in order
    dense: tuple[Dense, ...] = ()
    normalize: bool = False
    max_seq_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    has_modules: bool = False  # a modules.json says all this (else: the architecture's defaults)
    splade: Splade | None = None  # a SPLADE model (sentence-transformers' SparseEncoder): sparse vectors only

    def dimensions(self, hidden: int) -> int:
        return self.dense[-1].out_features if self.dense else hidden * len(self.pooling)


def read(model_dir: Path, default_pooling: str = "mean") -> Layout:
    """The folder's layout; without sentence-transformers files, `default_pooling` and normalisation."""
    st_config = _json(model_dir / "sentence_bert_config.json") or {}
    max_len = st_config.get("max_seq_length")
    prompts_config = _json(model_dir / "config_sentence_transformers.json") or {}
    prompts = prompts_config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise UnsupportedLayout(f"{model_dir}: config_sentence_transformers.json's prompts are not name -> text")
    default_prompt = prompts_config.get("default_prompt_name")
    modules = _json(model_dir / "modules.json")
    common = {
        "max_seq_length": int(max_len) if max_len else None,
        "prompts": dict(prompts),
        "default_prompt_name": default_prompt if default_prompt in prompts else None,
    }
    if modules is None:
        return Layout((default_pooling,), normalize=True, **common)
    pooling: tuple[str, ...] | None = None
    dense: list[Dense] = []
    normalize = False
    types = [str(module.get("type", "")) for module in modules]
    if any(t.startswith("pylate.") for t in types):
        raise UnsupportedLayout(
            f"{model_dir}: a PyLate (ColBERT) model: multi-vector models in PyLate's layout are not served, since "
            "PyLate, their reference, does not install beside this server's sentence-transformers to check them "
            "against (BGE-M3's multi-vector head is served)"
        )
    if types and _masked_lm(types[0], st_config):
        return Layout((), splade=_splade(model_dir, modules), has_modules=True, **common)
    for index, module in enumerate(modules):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = model_dir / module.get("path", "")
        if index == 0:
            if kind != "Transformer":
                raise UnsupportedLayout(f"{model_dir}: the first module is {kind!r}, not a Transformer")
            continue
        if normalize:
            raise UnsupportedLayout(f"{model_dir}: a {kind} module after Normalize is not supported")
        if kind == "Pooling":
            pooling = _pooling(folder)
        elif kind == "Dense":
            dense.append(_dense(folder))
        elif kind == "Normalize":
            normalize = True
        else:
            raise UnsupportedLayout(
                f"{model_dir}: the sentence-transformers module {kind!r} is not supported "
                "(supported after the transformer: Pooling, Dense, Normalize)"
            )
    if pooling is None:
        raise UnsupportedLayout(f"{model_dir}: modules.json has no Pooling module")
    return Layout(pooling, tuple(dense), normalize, has_modules=True, **common)


def _masked_lm(first: str, st_config: dict[str, Any]) -> bool:
    """A SparseEncoder's transformer: the legacy MLMTransformer, or a Transformer whose task is fill-mask."""
    kind = first.rsplit(".", 1)[-1]
    return kind == "MLMTransformer" or (kind == "Transformer" and st_config.get("transformer_task") == "fill-mask")


def _splade(model_dir: Path, modules: list[dict[str, Any]]) -> Splade:
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[1:] != ["SpladePooling"]:
        raise UnsupportedLayout(
            f"{model_dir}: a sparse encoder made of {', '.join(kinds)}; this server serves a masked-LM "
            "transformer followed by SpladePooling (SPLADE), nothing else"
        )
    cfg = _json(model_dir / modules[1].get("path", "") / "config.json") or {}
    pooling = cfg.get("pooling_strategy", "max")
    activation = cfg.get("activation_function", "relu")
    if pooling not in ("max", "sum") or activation not in ("relu", "log1p_relu"):
        raise UnsupportedLayout(f"{model_dir}: SpladePooling {pooling!r}/{activation!r} is not supported")
    return Splade(pooling, activation)


def _pooling(folder: Path) -> tuple[str, ...]:
    cfg = _json(folder / "config.json") or {}
    if cfg.get("include_prompt") is False:
        raise UnsupportedLayout(
            f"{folder}: Pooling excludes the prompt's tokens (include_prompt: false), which this server does not do"
        )
    if "pooling_mode" in cfg:
        raw = cfg["pooling_mode"]
        names = [raw] if isinstance(raw, str) else list(raw)
        modes = tuple("last" if m == "lasttoken" else m for m in names)
    else:
        modes = tuple(mode for key, mode in _FLAG_MODES.items() if cfg.get(key))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise UnsupportedLayout(f"{folder}: pooling mode {unknown or 'none'} is not supported")
    return modes


def _dense(folder: Path) -> Dense:
    cfg = _json(folder / "config.json") or {}
    activation = ACTIVATIONS.get(str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh")))
    if activation is None:
        raise UnsupportedLayout(f"{folder}: Dense activation {cfg.get('activation_function')!r} is not supported")
    if not (folder / "model.safetensors").exists():
        raise UnsupportedLayout(f"{folder}: Dense weights are not in model.safetensors")
    return Dense(folder, int(cfg["in_features"]), int(cfg["out_features"]), bool(cfg.get("bias", True)), activation)


def prompt_for(layout: Layout, name: str | None, input_type: str | None) -> str | None:
    """The prompt text to put before each input: `name` if given (it must exist), else the one for
    `input_type` (a query or a document, under any of their usual names), else the default prompt."""
    if name is not None:
        if name not in layout.prompts:
            known = ", ".join(sorted(layout.prompts)) or "none"
            raise InvalidRequest(
                f"the model has no prompt named {name!r} (its prompts: {known})",
                code="invalid_prompt_name",
                param="prompt_name",
            )
        return layout.prompts[name]
    if input_type is not None:
        for candidate in PROMPT_NAMES.get(input_type, (input_type,)):
            for key, text in layout.prompts.items():
                if key.lower() == candidate:
                    return text
        return None
    return layout.prompts.get(layout.default_prompt_name) if layout.default_prompt_name else None


# What each input type is called in the models' own prompt tables (e5: query/passage; nomic:
# search_query/search_document; EmbeddingGemma: query/document, Classification, Clustering, ...).
PROMPT_NAMES: dict[str, tuple[str, ...]] = {
    "query": ("query", "search_query"),
    "document": ("document", "passage", "search_document"),
    "classification": ("classification",),
    "clustering": ("clustering",),
}


def _json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedLayout(f"{path} is not readable JSON: {exc}") from None
