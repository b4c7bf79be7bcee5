"""Loading a model directory in the Hugging Face layout: the family is read from config.json (families.py),
the way its vectors are made from its sentence-transformers files (st_layout.py).

- BERT, RoBERTa, XLM-RoBERTa, MPNet: our MLX encoder (bert.py); with a `*ForSequenceClassification`
  head, a cross-encoder.
- Qwen3: a causal decoder through mlx-lm: an embedding model (last-token pooling unless its files say
  otherwise), or, as a reranker, the Qwen3-Reranker recipe.
- Gemma3 with bidirectional attention (EmbeddingGemma): mlx-lm's layers run as an encoder (gemma3.py).
- anything else: refused, in one sentence.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import mlx.core as mx

from mlx_serve import blas, jit
from mlx_serve.engine import families, st_layout
from mlx_serve.engine.batching import BatchRunner
from mlx_serve.engine.bert import BertConfig, BertEncoder, Kernels, SequenceClassifier
from mlx_serve.engine.decoder import DecoderStack
from mlx_serve.engine.embedder import Embedder
from mlx_serve.engine.gemma3 import Gemma3Encoder
from mlx_serve.engine.modernbert import ModernBertClassifier, ModernBertEncoder
from mlx_serve.engine.reranker import DEFAULT_INSTRUCTION, CrossEncoder, Qwen3Reranker, Reranker, cross_encoder_head
from mlx_serve.engine.tokenizer import TextTokenizer

# Qwen3-Embedding's query format, from its model card.
QWEN3_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
RERANKER_MAX_LENGTH = 8192  # Qwen3-Reranker's model card


class UnsupportedModelError(ValueError):
    pass


def compute_dtype(name: str, stored: mx.Dtype = mx.float32) -> mx.Dtype:
    """The dtype a model runs in. `auto`: float32 on a CPU (bf16/fp16 matmuls are slow there); on a GPU
    the checkpoint's own half precision (Qwen3's bfloat16: float16 is unstable for models trained in
    bfloat16), else float16. Pooling and normalisation always run in float32 (pooling.py)."""
    if name == "auto":
        if mx.default_device() != mx.gpu:
            return mx.float32
        return stored if stored in (mx.float16, mx.bfloat16) else mx.float16
    return getattr(mx, name)


def inference_streams() -> list[mx.Stream]:
    """On a GPU, one stream. On a CPU, two (one on a single core): MLX runs element-wise work on one
    thread per stream, so two streams use two cores for it; the cores are shared out among the streams'
    BLAS calls."""
    if mx.default_device() == mx.gpu:
        return [mx.default_stream(mx.gpu)]
    cores = os.cpu_count() or 1
    count = max(1, min(2, cores))
    blas.set_threads(cores // count)
    return [mx.new_stream(mx.cpu) for _ in range(count)]


def max_seq_length(model_dir: Path, config: dict) -> int:
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


def read_config(model_dir: Path) -> dict:
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise UnsupportedModelError(f"{model_dir} has no config.json")
    return json.loads(config_file.read_text())


def load_model(
    name: str, model_dir: Path, *, type: str, dtype: str = "auto", instruction: str | None = None
) -> Embedder | Reranker:
    """Load `model_dir` as an embedding model or a reranker (`type`), warmed up and ready to run.

    `instruction` replaces the model's default task for queries (Qwen3 embedding and reranking)."""
    jit.enable()  # before anything compiles: decoders' mlx-lm kernels gain from it too
    config = read_config(model_dir)
    model = _load(name, model_dir, type, config, dtype, instruction)
    # Loading leaves MLX's buffer cache full of weight-sized buffers that inference never reuses; while
    # it stays full, every activation goes back to malloc and page faults (GELU ran 5x slower).
    mx.clear_cache()
    # Warm up every stream, so the first request does not pay for compiling kernels.
    if isinstance(model, Embedder):
        model.embed(["warm up"] * len(model.streams), max_batch_tokens=4096)
    else:
        model.rerank("warm up", ["warm up"] * len(model.runner.streams), max_batch_tokens=4096)
    return model


def load_embedder(name: str, model_dir: Path, dtype: str = "auto") -> Embedder:
    model = load_model(name, model_dir, type="embedding", dtype=dtype)
    assert isinstance(model, Embedder)
    return model


def _load(
    name: str, model_dir: Path, type: str, config: dict, dtype: str, instruction: str | None
) -> Embedder | Reranker:
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.exists():
        raise UnsupportedModelError(f"{model_dir} has no tokenizer.json")
    try:
        families.check(config, type)
        layout = st_layout.read(
            model_dir, default_pooling="last" if families.family(config) in families.DECODERS else "mean"
        )
    except (families.UnsupportedArchitecture, st_layout.UnsupportedLayout) as exc:
        raise UnsupportedModelError(f"{name}: {exc}") from None
    arch = families.family(config)
    archs = config.get("architectures") or []
    architecture = archs[0] if archs else arch
    streams = inference_streams()
    to_dtype = partial(compute_dtype, dtype)
    if arch in families.ENCODERS:
        if arch == "modernbert":
            encoder: BertEncoder | ModernBertEncoder = ModernBertEncoder.load(model_dir, config, to_dtype)
        else:
            kernels = Kernels.choose(gpu=mx.default_device() == mx.gpu, native_cpu=jit.enable().native)
            encoder = BertEncoder.load(model_dir, BertConfig.from_dict(config), to_dtype, kernels)
        mx.eval(encoder.arrays())
        tokenizer = TextTokenizer(tokenizer_file, max_seq_length(model_dir, config))
        pad_id = int(config.get("pad_token_id", 0))
        if any(a.endswith("ForSequenceClassification") for a in archs):
            if type != "reranker":
                raise UnsupportedModelError(f"{name} is a cross-encoder: it reranks, it does not embed")
            classifier = (
                ModernBertClassifier(encoder, config)
                if isinstance(encoder, ModernBertEncoder)
                else SequenceClassifier(encoder)
            )
            if classifier.labels > 2:
                raise UnsupportedModelError(f"{name}: a classifier of {classifier.labels} labels is not a reranker")
            head = cross_encoder_head(classifier, classifier.labels)
            return CrossEncoder(name, tokenizer, BatchRunner(head, pad_id, "right", streams), encoder.arrays)
        if type == "reranker":
            raise UnsupportedModelError(f"{name} ({architecture}) has no head that scores pairs: it cannot rerank")
        hidden = int(config["hidden_size"])
        return Embedder(
            name, encoder, tokenizer, layout, hidden, pad_id, encoder.arrays, streams, architecture=architecture
        )
    if arch in families.BIDIRECTIONAL:
        gemma = Gemma3Encoder.load(model_dir, config, to_dtype)
        mx.eval(gemma.arrays())
        tokenizer = TextTokenizer(tokenizer_file, max_seq_length(model_dir, config))
        return Embedder(
            name,
            gemma,
            tokenizer,
            layout,
            int(config["hidden_size"]),
            gemma.pad_id,
            gemma.arrays,
            streams,
            architecture=architecture,
        )
    try:
        stack = DecoderStack.load(model_dir, to_dtype)
    except ValueError as exc:  # mlx-lm does not know the architecture
        raise UnsupportedModelError(f"{name}: {exc}") from exc
    mx.eval(stack.arrays())
    if type == "reranker":
        limit = min(RERANKER_MAX_LENGTH, int(config.get("max_position_embeddings", RERANKER_MAX_LENGTH)))
        return Qwen3Reranker(
            name, TextTokenizer(tokenizer_file, limit), stack, streams, instruction or DEFAULT_INSTRUCTION
        )
    return Embedder(
        name,
        stack,
        TextTokenizer(tokenizer_file, max_seq_length(model_dir, config)),
        layout,
        int(config["hidden_size"]),
        stack.pad_id,
        stack.arrays,
        streams,
        query_template=QWEN3_QUERY_TEMPLATE,
        default_instruction=instruction or DEFAULT_INSTRUCTION,
        architecture=architecture,
    )
