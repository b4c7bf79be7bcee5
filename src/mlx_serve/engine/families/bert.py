"""The BERT family of encoders in MLX: BERT (MiniLM, bge-*-en, e5-*-v2, ms-marco cross-encoders),
RoBERTa and XLM-RoBERTa (bge-m3, multilingual-e5, bge-reranker-*), and MPNet (all-mpnet-base-v2). They
share one post-norm layer; they differ in their weights' names, in where positions start (RoBERTa's and
MPNet's after the padding id), in segment embeddings (none in MPNet), in MPNet's relative position bias
added to every layer's attention scores, and in the classification head.

Weights are kept as plain arrays; every Linear weight is stored pre-transposed and contiguous, because
a matmul against a transposed view runs about 1.5x slower on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_serve.engine.families import Family, LoadContext, UnsupportedArchitecture, check_head
from mlx_serve.engine.heads import encoder_model


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
    model_type: str = "bert"
    pad_token_id: int = 0

    @property
    def position_offset(self) -> int:
        """RoBERTa's and MPNet's first position is the padding id + 1 (their position ids count from there)."""
        return self.pad_token_id + 1 if self.model_type in OFFSET_POSITIONS else 0

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


OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet"}


@dataclass(frozen=True)
class LayerNames:
    """Where a layer's weights are, by family."""

    q: str
    k: str
    v: str
    attn_out: str
    attn_norm: str
    up: str = "intermediate.dense"
    down: str = "output.dense"
    out_norm: str = "output.LayerNorm"


BERT_NAMES = LayerNames(
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
)
MPNET_NAMES = LayerNames(
    "attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "attention.LayerNorm"
)


class BertLayer:
    def __init__(self, w: dict[str, mx.array], p: str, cfg: BertConfig, kernels: Kernels, names: LayerNames) -> None:
        def lin(name: str) -> Linear:
            return Linear(w[f"{p}{name}.weight"], w[f"{p}{name}.bias"])

        def norm(name: str) -> LayerNorm:
            return LayerNorm(w[f"{p}{name}.weight"], w[f"{p}{name}.bias"], cfg.layer_norm_eps)

        # Q, K and V fused into one matmul: one pass over the activations instead of three. The
        # attention scale is folded into Q's weights, which saves a strided pass over Q per layer.
        scale = 1.0 / math.sqrt(cfg.hidden_size // cfg.num_attention_heads)
        q, k, v = (w[f"{p}{n}.weight"] for n in (names.q, names.k, names.v))
        qb, kb, vb = (w[f"{p}{n}.bias"] for n in (names.q, names.k, names.v))
        self.qkv = Linear(mx.concatenate([q * scale, k, v]), mx.concatenate([qb * scale, kb, vb]))
        self.attn_out = lin(names.attn_out)
        self.attn_norm = norm(names.attn_norm)
        self.up = lin(names.up)
        self.down = lin(names.down)
        self.out_norm = norm(names.out_norm)
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
        names = MPNET_NAMES if cfg.model_type == "mpnet" else BERT_NAMES
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w.get("embeddings.token_type_embeddings.weight")  # MPNet has none
        self.emb_norm = LayerNorm(w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg.layer_norm_eps)
        self.layers = [BertLayer(w, f"encoder.layer.{i}.", cfg, kernels, names) for i in range(cfg.num_hidden_layers)]
        self.relative_bias = w.get("encoder.relative_attention_bias.weight")  # MPNet: (buckets, heads)
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
        out = [self.word, self.position, self.emb_norm.weight, self.emb_norm.bias]
        out += [a for a in (self.token_type, self.relative_bias) if a is not None]
        for layer in self.layers:
            for part in (layer.qkv, layer.attn_out, layer.up, layer.down):
                out += [part.weight_t, part.bias]
            for ln in (layer.attn_norm, layer.out_norm):
                out += [ln.weight, ln.bias]
        return out + list(self.extra.values())

    def __call__(self, ids: mx.array, mask: mx.array, padded: bool, type_ids: mx.array | None = None) -> mx.array:
        length = ids.shape[1]
        offset = self.config.position_offset  # right-padded: a text's tokens are at offset, offset + 1, ...
        x = self.word[ids] + self.position[offset : offset + length]
        if self.token_type is not None:
            x = x + (self.token_type[0] if type_ids is None else self.token_type[type_ids])
        x = self.emb_norm(x)
        # Without padding, attention needs no mask at all, which is markedly faster on CPU.
        attn_mask = None
        if padded:
            attn_mask = mx.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(x.dtype)
        if self.relative_bias is not None:  # MPNet: the same bias in every layer, padding or not
            bias = relative_position_bias(self.relative_bias, length).astype(x.dtype)
            attn_mask = bias if attn_mask is None else attn_mask + bias
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


def relative_position_bias(table: mx.array, length: int, max_distance: int = 128) -> mx.array:
    """MPNet's bias (1, heads, L, L) from its table of 32 buckets: exact for distances under 8 each way,
    log-spaced up to `max_distance` (transformers' MPNetEncoder.relative_position_bucket)."""
    half = table.shape[0] // 2
    position = np.arange(length)
    n = position[:, None] - position[None, :]  # query - key
    bucket = (n < 0) * half
    n = np.abs(n)
    exact = half // 2
    # In float32, as transformers computes it: a bucket boundary must fall where it falls there.
    ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(exact)) / np.float32(math.log(max_distance / exact))
    large = exact + (ratio * np.float32(half - exact)).astype(np.int64)
    bucket = bucket + np.where(n < exact, n, np.minimum(large, half - 1))
    return table[mx.array(bucket)].transpose(2, 0, 1)[None]


class SequenceClassifier:
    """A *ForSequenceClassification head over the first token: BERT's tanh pooler then a linear layer;
    RoBERTa's, XLM-RoBERTa's and MPNet's dense + tanh then `out_proj`. The logits (B, labels)."""

    def __init__(self, encoder: BertEncoder) -> None:
        w = encoder.extra
        self.encoder = encoder
        if "classifier.out_proj.weight" in w:
            self.pooler = Linear(w["classifier.dense.weight"], w["classifier.dense.bias"])
            self.classifier = Linear(w["classifier.out_proj.weight"], w["classifier.out_proj.bias"])
        else:
            self.pooler = Linear(w["pooler.dense.weight"], w["pooler.dense.bias"])
            self.classifier = Linear(w["classifier.weight"], w["classifier.bias"])

    @property
    def labels(self) -> int:
        return self.classifier.bias.shape[0]

    def __call__(self, ids: mx.array, type_ids: mx.array, mask: mx.array, padded: bool) -> mx.array:
        hidden = self.encoder(ids, mask, padded, type_ids)
        return self.classifier(mx.tanh(self.pooler(hidden[:, 0])))


class MaskedLM:
    """BertForMaskedLM's head (what SPLADE pools): dense, GELU, LayerNorm, then the decoder, whose weight
    is the word embeddings unless saved apart, plus its bias: hidden (B, L, D) -> logits (B, L, vocabulary)."""

    PREFIX = "cls.predictions."

    def __init__(self, encoder: BertEncoder, kernels: Kernels) -> None:
        w, p = encoder.extra, self.PREFIX
        if f"{p}transform.dense.weight" not in w or encoder.config.hidden_act != "gelu":
            raise UnsupportedArchitecture(
                "SPLADE is served on BERT's masked-LM head (BertForMaskedLM, GELU): this model has none"
            )
        eps = encoder.config.layer_norm_eps
        self.transform = Linear(w[f"{p}transform.dense.weight"], w[f"{p}transform.dense.bias"])
        self.norm = LayerNorm(w[f"{p}transform.LayerNorm.weight"], w[f"{p}transform.LayerNorm.bias"], eps)
        bias = w.get(f"{p}bias", w.get(f"{p}decoder.bias"))
        if bias is None:
            raise UnsupportedArchitecture("the masked-LM head has no decoder bias (cls.predictions.bias)")
        self.decoder = Linear(w.get(f"{p}decoder.weight", encoder.word), bias)
        self.gelu = kernels.gelu

    def arrays(self) -> list[mx.array]:
        return [self.decoder.weight_t]  # the rest is in the encoder's `extra`

    def __call__(self, hidden: mx.array) -> mx.array:
        return self.decoder(self.norm(self.gelu(self.transform(hidden))))


def _strip_prefix(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Checkpoints saved from *ForXxx heads prefix the encoder with `bert.` (or `model.`)."""
    for prefix in ("bert.", "model.", "roberta.", "mpnet."):
        if any(k.startswith(prefix + "embeddings.") for k in weights):
            return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in weights.items()}
    return weights


def _load(ctx: LoadContext) -> Any:
    kernels = Kernels.choose(gpu=mx.default_device() == mx.gpu, native_cpu=ctx.native_cpu)
    encoder = BertEncoder.load(ctx.path, BertConfig.from_dict(ctx.config), ctx.dtype, kernels)
    mlm = MaskedLM(encoder, kernels) if ctx.layout.splade is not None else None
    arrays = encoder.arrays if mlm is None else lambda: encoder.arrays() + mlm.arrays()
    mx.eval(arrays())
    return encoder_model(
        ctx,
        encoder,
        lambda: SequenceClassifier(encoder),
        arrays,
        int(ctx.config["hidden_size"]),
        int(ctx.config.get("pad_token_id", 0)),
        logits=None if mlm is None else lambda: mlm,
    )


FAMILY = Family(
    name="bert",
    model_types=frozenset({"bert", "roberta", "xlm-roberta", "mpnet"}),
    described="BERT (all-MiniLM-L6-v2, bge-*-en-v1.5, e5-*-v2, ms-marco cross-encoders), XLM-RoBERTa and "
    "RoBERTa (bge-m3, multilingual-e5-*, paraphrase-multilingual-*, bge-reranker-v2-m3, bge-reranker-base/large), "
    "MPNet (all-mpnet-base-v2, multi-qa-mpnet-base-*)",
    load=_load,
    check=check_head,
)
