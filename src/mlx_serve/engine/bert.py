"""A BERT-family encoder in MLX (BERT, MiniLM and the other `BertModel` checkpoints).

Weights are kept as plain arrays; every Linear weight is stored pre-transposed and contiguous, because
a matmul against a transposed view runs about 1.5x slower on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_dict(cls, cfg: dict) -> BertConfig:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in cfg.items() if k in fields})


class Linear:
    __slots__ = ("bias", "weight_t")

    def __init__(self, weight: mx.array, bias: mx.array) -> None:
        self.weight_t = mx.contiguous(weight.T)
        self.bias = bias

    def __call__(self, x: mx.array) -> mx.array:
        return mx.addmm(self.bias, x, self.weight_t)


class LayerNorm:
    __slots__ = ("bias", "eps", "weight")

    def __init__(self, weight: mx.array, bias: mx.array, eps: float) -> None:
        self.weight, self.bias, self.eps = weight, bias, eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.weight, self.bias, self.eps)


# erf as a rational polynomial on [-4, 4] (the float32 approximation of Eigen and XLA; max error 4e-7).
# Where element-wise code is not vectorised (MLX's Linux CPU build without native kernels, see jit.py),
# MLX's erf and exp cost about 20 ns an element; this form is only multiplies, adds and one divide.
_ERF_NUM = (
    -1.60960333262415e-02,
    -2.95459980854025e-03,
    -7.34990630326855e-04,
    -5.69250639462346e-05,
    -2.10102402082508e-06,
    2.77068142495902e-08,
    -2.72614225801306e-10,
)
_ERF_DEN = (
    -1.42647390514189e-02,
    -7.37332916720468e-03,
    -1.68282697438203e-03,
    -2.13374055278905e-04,
    -1.45660718464996e-05,
)


def _erf(x: mx.array) -> mx.array:
    x = mx.clip(x, -4.0, 4.0)
    x2 = x * x
    num = _ERF_NUM[-1]
    for c in reversed(_ERF_NUM[:-1]):
        num = num * x2 + c
    den = _ERF_DEN[-1]
    for c in reversed(_ERF_DEN[:-1]):
        den = den * x2 + c
    return x * num / den


# Exact (erf) GELU, as BERT's "gelu" is; the tanh approximation would move vectors measurably.
# Shapeless: one compiled kernel serves every batch shape (MLX caches it on disk after the first build).
@partial(mx.compile, shapeless=True)
def gelu_rational(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + _erf(x * (1.0 / math.sqrt(2.0))))


@partial(mx.compile, shapeless=True)
def gelu_erf(x: mx.array) -> mx.array:
    # MLX's erf (Abramowitz-Stegun 7.1.26, the one PyTorch vectorises on CPU): one fused kernel.
    return 0.5 * x * (1.0 + mx.erf(x * (1.0 / math.sqrt(2.0))))


@partial(mx.compile, shapeless=True)
def softmax_fused(scores: mx.array) -> mx.array:
    # Three passes (max, exp and sum, divide) in compiled kernels, where mx.softmax's exp is a libm loop.
    e = mx.exp(scores - mx.max(scores, axis=-1, keepdims=True))
    return e / mx.sum(e, axis=-1, keepdims=True)


def _softmax(scores: mx.array) -> mx.array:
    return mx.softmax(scores, axis=-1)


Attention = Callable[[mx.array, mx.array, mx.array, mx.array | None], mx.array]


def fused_attention(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
    # One Metal/CUDA kernel on a GPU. Q arrives scaled (see BertLayer).
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)


def written_attention(softmax: Callable[[mx.array], mx.array]) -> Attention:
    """Attention as two matmuls around `softmax`: on a CPU, mx.fast.scaled_dot_product_attention falls
    back to the same matmuls around MLX's own softmax."""

    def attention(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
        scores = q @ k.swapaxes(-1, -2)
        scores = scores if mask is None else scores + mask
        # One key: the shapeless compiled softmax crashes MLX's CPU backend on a last axis of size 1 (a
        # one-token input); a softmax over one value is 1 anyway.
        return (_softmax(scores) if scores.shape[-1] == 1 else softmax(scores)) @ v

    return attention


@dataclass(frozen=True)
class Kernels:
    """A layer's GELU and attention, picked for where it runs."""

    gelu: Callable[[mx.array], mx.array]
    attention: Attention

    @classmethod
    def choose(cls, gpu: bool, native_cpu: bool) -> Kernels:
        # Measured on 8x20 tokens, one core: GELU 0.45 ms (erf) vs 0.94 (rational) with native kernels,
        # but 12.5 vs 1.4 ms without; softmax 0.28 (fused) vs 0.69 ms with them, 1.2 vs 0.69 without.
        if gpu:
            return cls(gelu_erf, fused_attention)
        if native_cpu:
            return cls(gelu_erf, written_attention(softmax_fused))
        return cls(gelu_rational, written_attention(_softmax))


class BertLayer:
    def __init__(self, w: dict[str, mx.array], p: str, cfg: BertConfig, kernels: Kernels) -> None:
        def lin(name: str) -> Linear:
            return Linear(w[f"{p}{name}.weight"], w[f"{p}{name}.bias"])

        def norm(name: str) -> LayerNorm:
            return LayerNorm(w[f"{p}{name}.weight"], w[f"{p}{name}.bias"], cfg.layer_norm_eps)

        # Q, K and V fused into one matmul: one pass over the activations instead of three. The
        # attention scale is folded into Q's weights, which saves a strided pass over Q per layer.
        scale = 1.0 / math.sqrt(cfg.hidden_size // cfg.num_attention_heads)
        q, k, v = (w[f"{p}attention.self.{n}.weight"] for n in ("query", "key", "value"))
        qb, kb, vb = (w[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value"))
        self.qkv = Linear(mx.concatenate([q * scale, k, v]), mx.concatenate([qb * scale, kb, vb]))
        self.attn_out = lin("attention.output.dense")
        self.attn_norm = norm("attention.output.LayerNorm")
        self.up = lin("intermediate.dense")
        self.down = lin("output.dense")
        self.out_norm = norm("output.LayerNorm")
        self.heads = cfg.num_attention_heads
        self.kernels = kernels

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        b, length, d = x.shape
        q, k, v = self.qkv(x).reshape(b, length, 3, self.heads, d // self.heads).transpose(2, 0, 3, 1, 4)
        attn = self.kernels.attention(q, k, v, mask).transpose(0, 2, 1, 3).reshape(b, length, d)
        x = self.attn_norm(x + self.attn_out(attn))
        return self.out_norm(x + self.down(self.kernels.gelu(self.up(x))))


class BertEncoder:
    """Token ids (B, L) and a 1/0 padding mask -> last hidden states (B, L, D)."""

    def __init__(self, cfg: BertConfig, weights: dict[str, mx.array], kernels: Kernels) -> None:
        self.config = cfg
        w = _strip_prefix(weights)
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"]
        self.emb_norm = LayerNorm(w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg.layer_norm_eps)
        self.layers = [BertLayer(w, f"encoder.layer.{i}.", cfg, kernels) for i in range(cfg.num_hidden_layers)]
        self.extra = {k: v for k, v in w.items() if not k.startswith(("embeddings.", "encoder."))}

    @classmethod
    def load(
        cls, model_dir: Path, cfg: BertConfig, dtype: Callable[[mx.Dtype], mx.Dtype], kernels: Kernels
    ) -> BertEncoder:
        """`dtype` picks the compute dtype from the checkpoint's."""
        weights: dict[str, mx.array] = {}
        for file in sorted(model_dir.glob("*.safetensors")):
            weights.update(mx.load(str(file)))
        if not weights:
            raise FileNotFoundError(f"no .safetensors weights in {model_dir}")
        target = dtype(next(iter(weights.values())).dtype)
        weights = {k: v.astype(target) for k, v in weights.items()}
        return cls(cfg, weights, kernels)

    def arrays(self) -> list[mx.array]:
        out = [self.word, self.position, self.token_type, self.emb_norm.weight, self.emb_norm.bias]
        for layer in self.layers:
            for part in (layer.qkv, layer.attn_out, layer.up, layer.down):
                out += [part.weight_t, part.bias]
            for ln in (layer.attn_norm, layer.out_norm):
                out += [ln.weight, ln.bias]
        return out + list(self.extra.values())

    def __call__(self, ids: mx.array, mask: mx.array, padded: bool, type_ids: mx.array | None = None) -> mx.array:
        length = ids.shape[1]
        segments = self.token_type[0] if type_ids is None else self.token_type[type_ids]
        x = self.word[ids] + self.position[:length] + segments
        x = self.emb_norm(x)
        # Without padding, attention needs no mask at all, which is markedly faster on CPU.
        attn_mask = None
        if padded:
            attn_mask = mx.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(x.dtype)
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


class SequenceClassifier:
    """BertForSequenceClassification's head: tanh pooler over [CLS], then a linear layer to the logits."""

    def __init__(self, encoder: BertEncoder) -> None:
        w = encoder.extra
        self.encoder = encoder
        self.pooler = Linear(w["pooler.dense.weight"], w["pooler.dense.bias"])
        self.classifier = Linear(w["classifier.weight"], w["classifier.bias"])

    def __call__(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        hidden = self.encoder(ids, mask, padded, type_ids)
        return self.classifier(mx.tanh(self.pooler(hidden[:, 0])))


def _strip_prefix(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Checkpoints saved from *ForXxx heads prefix the encoder with `bert.` (or `model.`)."""
    for prefix in ("bert.", "model.", "roberta."):
        if any(k.startswith(prefix + "embeddings.") for k in weights):
            return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in weights.items()}
    return weights
