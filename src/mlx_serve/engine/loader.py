"""Loading a model folder in the Hugging Face layout: its family (families/, by config.json's model_type)
builds it as its sentence-transformers files describe it (st_layout.py); then it is warmed up.

Loading changes no process-wide state: the fast BLAS, its threads and the JIT compiler are set once at
start (cpu/__init__.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_serve.core.types import ModelType
from mlx_serve.cpu import jit
from mlx_serve.engine import families, st_layout, verify
from mlx_serve.engine.embedder import Embedder
from mlx_serve.engine.reranker import Reranker


class UnsupportedModelError(ValueError):
    pass


HALF = (mx.float16, mx.bfloat16)


def compute_dtype(name: str, stored: mx.Dtype = mx.float32, float16: bool = True) -> mx.Dtype:
    """The dtype a model runs in. `auto`: float32 on a CPU (bf16/fp16 matmuls are slow there); on a GPU
    the checkpoint's own half precision (Qwen3's bfloat16: float16 is unstable for models trained in
    bfloat16), else float16, or bfloat16 for a family whose activations pass float16's range (`float16`
    False). Pooling and normalisation always run in float32 (pooling.py)."""
    if name == "auto":
        if mx.default_device() != mx.gpu:
            return mx.float32
        half = stored if stored in HALF else mx.float16
        return mx.bfloat16 if half == mx.float16 and not float16 else half
    return getattr(mx, name)


def stream_count() -> int:
    """On a GPU, one stream. On a CPU, two (one on a single core): MLX runs element-wise work on one thread
    per stream, so two streams use two cores for it; the cores are shared out among the streams' BLAS
    calls (cpu/__init__.py sets the BLAS threads to match, once)."""
    if mx.default_device() == mx.gpu:
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def inference_streams() -> list[mx.Stream]:
    if mx.default_device() == mx.gpu:
        return [mx.default_stream(mx.gpu)]
    return [mx.new_stream(mx.cpu) for _ in range(stream_count())]


def max_seq_length(model_dir: Path, config: dict[str, Any]) -> int:
    """sentence-transformers' max_seq_length if given, else the tokenizer's, capped by the positions (of
    which RoBERTa's and MPNet's first padding id + 1 are not a text's)."""
    limit = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in {"roberta", "xlm-roberta", "camembert", "mpnet"}:
        limit -= int(config.get("pad_token_id", 1)) + 1
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


def read_config(model_dir: Path) -> dict[str, Any]:
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise UnsupportedModelError(f"{model_dir.name} has no config.json")
    config = json.loads(config_file.read_text())
    if not isinstance(config, dict):
        raise UnsupportedModelError("config.json is not a JSON object")
    return config


def load_model(
    name: str, model_dir: Path, *, type: ModelType, dtype: str = "auto", instruction: str | None = None
) -> Any:
    """Load `model_dir` as an embedding model, a reranker or a classifier (`type`), warmed up and ready.

    `instruction` replaces the model's default task for queries (Qwen3 embedding and reranking)."""
    config = read_config(model_dir)
    if not (model_dir / "tokenizer.json").exists():
        raise UnsupportedModelError(f"{name} has no tokenizer.json")
    try:
        family = families.check(config, type)
        if dtype == "float16" and not family.float16:
            raise families.UnsupportedArchitecture(
                f"{family.name} models overflow float16 (their activations pass its largest value, 65504): "
                "serve them with dtype auto, bfloat16 or float32"
            )
        layout = st_layout.read(model_dir, default_pooling=family.default_pooling)
        verify.check_folder(model_dir, config)  # headers only: a folder stored before these checks existed
    except (families.UnsupportedArchitecture, st_layout.UnsupportedLayout, verify.FolderLies) as exc:
        raise UnsupportedModelError(f"{name}: {exc}") from None
    status = jit.status()
    chosen: list[mx.Dtype] = []

    def pick(stored: mx.Dtype) -> mx.Dtype:
        chosen.append(compute_dtype(dtype, stored, family.float16))
        return chosen[-1]

    context = families.LoadContext(
        name=name,
        path=model_dir,
        config=config,
        type=type,
        layout=layout,
        dtype=pick,
        streams=inference_streams(),
        native_cpu=status is not None and status.native,
        instruction=instruction,
    )
    model = family.load(context)
    # A half-precision model whose output overflows is run again in float32 (serving/scheduler.py):
    # `precision` says whether that can help; a quantized model keeps its own dtype and never picks one.
    model.precision = chosen[0] if chosen else None
    model.widened = None  # its float32 twin, loaded on first need
    # Loading leaves MLX's buffer cache full of weight-sized buffers that inference never reuses; while
    # it stays full, every activation goes back to malloc and page faults (GELU ran 5x slower).
    mx.clear_cache()
    warm_up(model)
    return model


def warm_up(model: Any) -> None:
    """Run every stream once, so that the first request does not pay for compiling kernels."""
    count = len(model.runner.streams)
    if isinstance(model, Embedder):
        model.embed(["warm up"] * count, max_batch_tokens=4096)
    elif isinstance(model, Reranker):
        model.rerank("warm up", ["warm up"] * count, max_batch_tokens=4096)
    else:
        model.classify(["warm up"] * count, max_batch_tokens=4096)


def load_embedder(name: str, model_dir: Path, dtype: str = "auto") -> Embedder:
    model = load_model(name, model_dir, type="embedding", dtype=dtype)
    assert isinstance(model, Embedder)
    return model
