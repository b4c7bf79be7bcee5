"""Decoder models (Qwen3 and the other architectures mlx-lm ships) run over right-padded batches.

With causal attention, a token sees only the tokens before it; padding placed after a text is never
seen by any of its tokens, so no padding mask is needed at all and every text keeps positions 0..n-1,
exactly as alone. (Left padding would need a full (B, L, L) mask, which sends attention down a slower
path: on CUDA, cuDNN's attention with a mask tensor instead of its causal kernel.) The padding rows'
own outputs are garbage and never read: pooling takes each text's last real token.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn


@cache
def _mlx_lm_utils() -> Any:
    """mlx_lm.utils, imported on the first decoder model only (it brings transformers: some 2 s and 200 MB
    that a server of BERT-family models never needs), and without what it does at import:
    `resource.setrlimit(RLIMIT_NOFILE, (2048, 4096))`, which would lower the server's open-files limit (one
    per connection, process/server.py raises it to 8192), its hard limit for good."""
    import resource

    real = resource.setrlimit
    resource.setrlimit = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        import mlx_lm.utils as utils
    finally:
        resource.setrlimit = real
    return utils


def _classes_for_any_checkpoint(config: dict) -> tuple[type[nn.Module], type]:
    """mlx-lm's classes, accepting checkpoints saved without the `model.` prefix or without an LM head,
    as embedding checkpoints (saved from the bare transformer) are."""
    model_cls, args_cls = _mlx_lm_utils()._get_classes(config)

    class AnyCheckpoint(model_cls):  # type: ignore[misc, valid-type]
        def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
            if weights and not any(k.startswith("model.") for k in weights):
                weights = {(k if k.startswith("lm_head.") else f"model.{k}"): v for k, v in weights.items()}
            if hasattr(self, "lm_head") and "lm_head.weight" not in weights:
                # Never used for embeddings; present so that loading stays strict for everything else.
                weights["lm_head.weight"] = mx.zeros(self.lm_head.weight.shape)
            return super().sanitize(weights) if hasattr(super(), "sanitize") else weights

    return AnyCheckpoint, args_cls


class DecoderStack:
    """Hidden states (B, L, D) of a right-padded batch (`mask`: 1 for tokens, 0 for padding)."""

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        self.model = model
        self.inner = model.model
        self.config = config

    @classmethod
    def load(
        cls, model_dir: Path, dtype: Callable[[mx.Dtype], mx.Dtype], overrides: dict[str, Any] | None = None
    ) -> DecoderStack:
        """`dtype` picks the compute dtype from the checkpoint's (a quantized model keeps its own);
        `overrides` correct config values mlx-lm would read otherwise (see gemma3.py)."""
        from mlx.utils import tree_flatten

        model, config = _mlx_lm_utils().load_model(
            model_dir, model_config=overrides or {}, get_model_classes=_classes_for_any_checkpoint
        )
        if not config.get("quantization"):
            stored = next(v for _, v in tree_flatten(model.parameters())).dtype
            model.set_dtype(dtype(stored))
        return cls(model, config)

    @property
    def pad_id(self) -> int:
        """Padding is masked out, so any id serves; the configured pad (or end-of-text) is the natural one."""
        pad = self.config.get("pad_token_id")
        if pad is None:
            eos = self.config.get("eos_token_id", 0)
            pad = eos[0] if isinstance(eos, list) else eos
        return int(pad or 0)

    def arrays(self) -> list[mx.array]:
        from mlx.utils import tree_flatten

        return [v for _, v in tree_flatten(self.model.parameters())]

    def __call__(self, ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        h = self.inner.embed_tokens(ids)
        for layer in self.inner.layers:
            h = layer(h, "causal", None)
        return self.inner.norm(h)

    def token_logits(self, hidden: mx.array, token_ids: list[int]) -> mx.array:
        """Logits of a few vocabulary entries only, without the full (B, vocab) projection."""
        tied = getattr(self.model.args, "tie_word_embeddings", False) or not hasattr(self.model, "lm_head")
        head = self.inner.embed_tokens if tied else self.model.lm_head
        if isinstance(head, (nn.QuantizedEmbedding, nn.QuantizedLinear)):  # packed weights: project, then pick
            full = head.as_linear(hidden) if tied else head(hidden)
            return full[:, mx.array(token_ids)]
        return hidden @ head.weight[mx.array(token_ids)].T


def stored_dtype(config: dict[str, Any]) -> mx.Dtype:
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return {"bfloat16": mx.bfloat16, "float16": mx.float16}.get(str(name), mx.float32)


def convert(staging: Path, config: dict[str, Any], type: str, quantize: int | None) -> dict[str, Any]:
    """A decoder checkpoint rewritten by mlx-lm (optionally quantized), as the engine loads it. An embedding
    model's LM head is dropped: embeddings never use it, and loading supplies a placeholder."""
    utils = _mlx_lm_utils()
    quantize_model, save_config, save_model = utils.quantize_model, utils.save_config, utils.save_model

    stack = DecoderStack.load(staging, lambda stored: mx.float32 if quantize else stored_dtype(config))
    model, new_config = stack.model, dict(stack.config)
    if type == "embedding" and "lm_head" in model:
        model.pop("lm_head")
    if quantize:
        model, new_config = quantize_model(model, new_config, group_size=64, bits=quantize)
    for old in staging.glob("model*.safetensors"):
        old.unlink()
    (staging / "model.safetensors.index.json").unlink(missing_ok=True)
    save_model(staging, model)
    save_config(new_config, staging / "config.json")
    return {"quantization": quantize}
