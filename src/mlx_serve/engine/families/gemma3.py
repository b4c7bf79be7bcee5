"""Gemma3 text models as bidirectional encoders (EmbeddingGemma): mlx-lm's Gemma3 layers, run the way
transformers runs them with `use_bidirectional_attention`: every token sees every other token in global
layers, and those within `sliding_window` positions either way in local ones; no causal mask.

transformers' configs now list each layer's type (`layer_types`) and rope per type (`rope_parameters`),
which mlx-lm's Gemma3 does not read (it assumes a local/global pattern of 6 and its own rope defaults):
the pattern and the rope bases are handed to it from the config, and a config that fits neither is
refused rather than run another way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_serve.engine.embedder import Embedder
from mlx_serve.engine.families import Family, LoadContext, UnsupportedArchitecture
from mlx_serve.engine.families.decoder import DecoderStack
from mlx_serve.engine.loader import max_seq_length
from mlx_serve.engine.tokenizer import TextTokenizer


def mlx_lm_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """What mlx-lm's Gemma3 needs to run this config's layers as transformers does."""
    types = config.get("layer_types")
    layers = int(config["num_hidden_layers"])
    if types:
        period = next((i + 1 for i, t in enumerate(types) if t == "full_attention"), layers + 1)
        expected = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(layers)]
        if list(types) != expected:
            raise UnsupportedArchitecture(f"Gemma3 layer types {types} are not a repeating local/global pattern")
    else:
        period = int(config.get("sliding_window_pattern", 6))
    out: dict[str, Any] = {"sliding_window_pattern": period}
    rope = config.get("rope_parameters") or {}
    for kind, key in (("full_attention", "rope_theta"), ("sliding_attention", "rope_local_base_freq")):
        params = rope.get(kind)
        if params:
            if params.get("rope_type", "default") != "default":
                raise UnsupportedArchitecture(f"Gemma3 {kind} rope {params.get('rope_type')!r} is not supported")
            out[key] = float(params["rope_theta"])
    return out


class Gemma3Encoder:
    """Token ids (B, L) and a 1/0 padding mask of a right-padded batch -> last hidden states (B, L, D)."""

    def __init__(self, stack: DecoderStack) -> None:
        self.stack = stack
        inner = stack.inner
        # transformers reads a bidirectional config's `sliding_window` W as a window of W // 2 + 1 each
        # way, a token seeing those less than that far from it (EmbeddingGemma: 512 -> 257).
        self.window = int(stack.model.args.sliding_window) // 2 + 1
        self.sliding = [bool(layer.self_attn.is_sliding) for layer in inner.layers]
        self.scale = float(stack.model.args.hidden_size) ** 0.5

    @classmethod
    def load(cls, model_dir: Path, config: dict[str, Any], dtype: Callable[[mx.Dtype], mx.Dtype]) -> Gemma3Encoder:
        return cls(DecoderStack.load(model_dir, dtype, mlx_lm_overrides(config)))

    @property
    def pad_id(self) -> int:
        return self.stack.pad_id

    def arrays(self) -> list[mx.array]:
        return self.stack.arrays()

    def __call__(self, ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        inner = self.stack.inner
        h = inner.embed_tokens(ids)
        # transformers scales by sqrt(hidden) in the weights' dtype (mlx-lm rounds the factor to bfloat16).
        h = h * mx.array(self.scale, dtype=h.dtype)
        length = ids.shape[1]
        position = mx.arange(length)
        near = mx.abs(position[:, None] - position[None, :]) < self.window  # (L, L), both ways
        keys = mask[:, None, None, :] > 0  # (B, 1, 1, L): padding is never a key
        global_mask = keys if padded else None
        local_mask = keys & near[None, None] if padded else near[None, None]
        for layer, sliding in zip(inner.layers, self.sliding, strict=True):
            h = layer(h, local_mask if sliding else global_mask, None)
        return inner.norm(h)


def _check(config: dict[str, Any], type: str) -> None:
    if not config.get("use_bidirectional_attention"):
        archs = ", ".join(config.get("architectures") or []) or "gemma3_text"
        raise UnsupportedArchitecture(
            f"{archs} is a causal Gemma3 language model, not an embedding model this server runs "
            "(EmbeddingGemma's config sets use_bidirectional_attention)"
        )
    mlx_lm_overrides(config)  # a layer pattern or rope it cannot run is refused here, at pull


def _load(ctx: LoadContext) -> Any:
    gemma = Gemma3Encoder.load(ctx.path, ctx.config, ctx.dtype)
    mx.eval(gemma.arrays())
    tokenizer = TextTokenizer(ctx.path / "tokenizer.json", max_seq_length(ctx.path, ctx.config))
    return Embedder(
        ctx.name, gemma, tokenizer, ctx.layout, int(ctx.config["hidden_size"]), gemma.pad_id, gemma.arrays, ctx.streams
    )


FAMILY = Family(
    name="gemma3",
    # Gemma3's residual stream reaches 1e5-1e6 in trained models, past float16's 65504 (transformers #36822,
    # text-embeddings-inference #748): bfloat16 on a GPU instead.
    float16=False,
    model_types=frozenset({"gemma3_text"}),
    described="Gemma3 text encoders with bidirectional attention (EmbeddingGemma)",
    load=_load,
    check=_check,
    types=frozenset({"embedding"}),
)
