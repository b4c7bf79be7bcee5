"""ModernBERT in MLX (gte-modernbert-base, modernbert-embed-base, ModernBERT rerankers), as transformers
runs it: pre-norm layers (LayerNorms without bias; none before the first layer's attention), rotary
positions (bases per layer type), global layers that see every token and local ones that see those at
most `local_attention // 2` positions away either way, and a gated GELU MLP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_serve.engine.families import Family, LoadContext, UnsupportedArchitecture, check_head
from mlx_serve.engine.families.bert import Linear, gelu_erf
from mlx_serve.engine.heads import encoder_model

DEFAULT_THETA = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}


def _norm(w: dict[str, mx.array], name: str, eps: float) -> Callable[[mx.array], mx.array]:
    weight, bias = w[f"{name}.weight"], w.get(f"{name}.bias")
    return lambda x: mx.fast.layer_norm(x, weight, bias, eps)


def _linear(w: dict[str, mx.array], name: str) -> Linear | Callable[[mx.array], mx.array]:
    weight, bias = w[f"{name}.weight"], w.get(f"{name}.bias")
    if bias is not None:
        return Linear(weight, bias)
    weight_t = mx.contiguous(weight.T)
    return lambda x: x @ weight_t


def layer_types(config: dict[str, Any]) -> list[str]:
    """Each layer's attention: the config's list, or (older configs) global every n-th layer from the first."""
    if config.get("layer_types"):
        return list(config["layer_types"])
    every = int(config.get("global_attn_every_n_layers") or 3)
    return ["sliding_attention" if i % every else "full_attention" for i in range(int(config["num_hidden_layers"]))]


def rope_bases(config: dict[str, Any]) -> dict[str, float]:
    params = config.get("rope_parameters") or {}
    old = {"full_attention": config.get("global_rope_theta"), "sliding_attention": config.get("local_rope_theta")}
    bases = {}
    for kind, default in DEFAULT_THETA.items():
        p = params.get(kind) or {}
        if p.get("rope_type", "default") != "default":
            raise UnsupportedArchitecture(f"ModernBERT {kind} rope {p.get('rope_type')!r} is not supported")
        bases[kind] = float(p.get("rope_theta") or old[kind] or default)
    return bases


class ModernBertEncoder:
    """Token ids (B, L) and a 1/0 padding mask of a right-padded batch -> last hidden states (B, L, D)."""

    def __init__(self, config: dict[str, Any], weights: dict[str, mx.array]) -> None:
        if config.get("hidden_activation", "gelu") != "gelu":
            raise UnsupportedArchitecture(f"ModernBERT activation {config.get('hidden_activation')!r} is not supported")
        w = {k.removeprefix("model."): v for k, v in weights.items()}
        eps = float(config.get("norm_eps", 1e-5))
        self.heads = int(config["num_attention_heads"])
        self.head_dim = int(config["hidden_size"]) // self.heads
        self.half_window = int(config.get("local_attention", 128)) // 2
        self.types = layer_types(config)
        self.bases = rope_bases(config)
        self.word = w["embeddings.tok_embeddings.weight"]
        self.emb_norm = _norm(w, "embeddings.norm", eps)
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"layers.{i}."
            self.layers.append(
                {
                    "attn_norm": _norm(w, f"{p}attn_norm", eps) if i else (lambda x: x),
                    "qkv": _linear(w, f"{p}attn.Wqkv"),
                    "attn_out": _linear(w, f"{p}attn.Wo"),
                    "mlp_norm": _norm(w, f"{p}mlp_norm", eps),
                    "up": _linear(w, f"{p}mlp.Wi"),
                    "down": _linear(w, f"{p}mlp.Wo"),
                }
            )
        self.final_norm = _norm(w, "final_norm", eps)
        self.weights = w
        self.extra = {k: v for k, v in w.items() if k.startswith(("head.", "classifier."))}

    @classmethod
    def load(cls, model_dir: Path, config: dict[str, Any], dtype: Callable[[mx.Dtype], mx.Dtype]) -> ModernBertEncoder:
        weights: dict[str, mx.array] = {}
        for file in sorted(model_dir.glob("*.safetensors")):
            weights.update(mx.load(str(file)))
        target = dtype(next(iter(weights.values())).dtype)
        return cls(config, {k: v.astype(target) for k, v in weights.items()})

    def arrays(self) -> list[mx.array]:
        return list(self.weights.values())

    def __call__(self, ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        b, length = ids.shape
        x = self.emb_norm(self.word[ids])
        position = mx.arange(length)
        near = mx.abs(position[:, None] - position[None, :]) <= self.half_window
        keys = mask[:, None, None, :] > 0
        masks = {
            "full_attention": keys if padded else None,
            "sliding_attention": (keys & near[None, None]) if padded else near[None, None],
        }
        scale = 1.0 / math.sqrt(self.head_dim)
        for layer, kind in zip(self.layers, self.types, strict=True):
            qkv = layer["qkv"](layer["attn_norm"](x)).reshape(b, length, 3, self.heads, self.head_dim)
            q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
            base = self.bases[kind]
            q = mx.fast.rope(q, self.head_dim, traditional=False, base=base, scale=1.0, offset=0)
            k = mx.fast.rope(k, self.head_dim, traditional=False, base=base, scale=1.0, offset=0)
            attn = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=masks[kind])
            x = x + layer["attn_out"](attn.transpose(0, 2, 1, 3).reshape(b, length, -1))
            up, gate = mx.split(layer["up"](layer["mlp_norm"](x)), 2, axis=-1)
            x = x + layer["down"](gelu_erf(up) * gate)
        return self.final_norm(x)


class ModernBertClassifier:
    """ModernBertForSequenceClassification's head: the first token (or the mean), dense + GELU + norm, then
    the classifier; the logits (B, labels)."""

    def __init__(self, encoder: ModernBertEncoder, config: dict[str, Any]) -> None:
        if config.get("classifier_activation", "gelu") != "gelu":
            raise UnsupportedArchitecture("ModernBERT classifier activation is not GELU")
        w, eps = encoder.extra, float(config.get("norm_eps", 1e-5))
        self.encoder = encoder
        self.mean = config.get("classifier_pooling", "cls") == "mean"
        self.dense = _linear(w, "head.dense")
        self.norm = _norm(w, "head.norm", eps)
        self.classifier = _linear(w, "classifier")
        self.labels = int(w["classifier.weight"].shape[0])

    def __call__(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        hidden = self.encoder(ids, mask, padded)
        if self.mean:
            # In float32, as pooling.py does: a float16 sum of 512 states overflows.
            m = mask[..., None].astype(mx.float32)
            pooled = ((hidden.astype(mx.float32) * m).sum(axis=1) / m.sum(axis=1)).astype(hidden.dtype)
        else:
            pooled = hidden[:, 0]
        return self.classifier(self.norm(gelu_erf(self.dense(pooled))))


def _load(ctx: LoadContext) -> Any:
    encoder = ModernBertEncoder.load(ctx.path, ctx.config, ctx.dtype)
    mx.eval(encoder.arrays())
    return encoder_model(
        ctx,
        encoder,
        lambda: ModernBertClassifier(encoder, ctx.config),
        encoder.arrays,
        int(ctx.config["hidden_size"]),
        int(ctx.config.get("pad_token_id", 0)),
    )


FAMILY = Family(
    name="modernbert",
    model_types=frozenset({"modernbert"}),
    described="ModernBERT (gte-modernbert-base, modernbert-embed-base, gte-reranker-modernbert-base)",
    load=_load,
    check=check_head,
)
