"""Loading a model directory in the Hugging Face layout: the architecture is read from config.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx

from mlx_serve.engine.bert import BertConfig, BertEncoder
from mlx_serve.engine.embedder import Embedder
from mlx_serve.engine.pooling import PoolingConfig
from mlx_serve.engine.tokenizer import TextTokenizer

BERT_FAMILY = {"bert"}


class UnsupportedModelError(ValueError):
    pass


def compute_dtype(name: str) -> mx.Dtype:
    """`auto` is float32 on CPU (bf16/fp16 matmuls are slow there) and float16 on a GPU."""
    if name == "auto":
        return mx.float16 if mx.default_device() == mx.gpu else mx.float32
    return getattr(mx, name)


def inference_streams() -> list[mx.Stream]:
    """On a CPU, one stream per core (at most 2: beyond that the BLAS threads compete); on a GPU, one."""
    if mx.default_device() == mx.gpu:
        return [mx.default_stream(mx.gpu)]
    return [mx.new_stream(mx.cpu) for _ in range(max(1, min(2, os.cpu_count() or 1)))]


def max_seq_length(model_dir: Path, config: dict) -> int:
    """sentence-transformers' max_seq_length if given, else the tokenizer's, capped by the positions."""
    limit = int(config.get("max_position_embeddings", 512))
    st = model_dir / "sentence_bert_config.json"
    if st.exists():
        value = json.loads(st.read_text()).get("max_seq_length")
        if value:
            return min(int(value), limit)
    tc = model_dir / "tokenizer_config.json"
    if tc.exists():
        value = json.loads(tc.read_text()).get("model_max_length")
        if isinstance(value, int) and value < 1_000_000:
            return min(value, limit)
    return limit


def load_embedder(name: str, model_dir: Path, dtype: str = "auto") -> Embedder:
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise UnsupportedModelError(f"{model_dir} has no config.json")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type", "")
    if model_type not in BERT_FAMILY:
        raise UnsupportedModelError(f"model type {model_type!r} is not supported for embeddings")
    cfg = BertConfig.from_dict(config)
    encoder = BertEncoder.load(model_dir, cfg, compute_dtype(dtype))
    mx.eval(encoder.arrays())
    tokenizer = TextTokenizer(model_dir / "tokenizer.json", max_seq_length(model_dir, config))
    embedder = Embedder(
        name=name,
        forward=encoder,
        tokenizer=tokenizer,
        pooling=PoolingConfig.from_sentence_transformers(model_dir),
        dimensions=cfg.hidden_size,
        pad_id=int(config.get("pad_token_id", 0)),
        arrays=encoder.arrays,
        streams=inference_streams(),
    )
    # Warm up every stream, so the first request does not pay for compiling kernels.
    embedder.embed(["warm up"] * len(embedder.streams), max_batch_tokens=4096)
    return embedder
