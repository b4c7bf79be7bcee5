"""What an encoder family's weights become, by the type a model is served as: an embedder (pooling,
Dense, Normalize, as its sentence-transformers files say; SPLADE's pooling of a masked-LM head; BGE-M3's
sparse and colbert heads where they sit beside the weights), a cross-encoder (a reranker) or a classifier.
Shared by the encoder families (bert.py, modernbert.py), which differ only in their networks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_serve.engine.batching import BatchRunner
from mlx_serve.engine.classifier import Classifier, logits_head
from mlx_serve.engine.embedder import Embedder, Forward, Logits, TokenHeads
from mlx_serve.engine.families import LoadContext, UnsupportedArchitecture
from mlx_serve.engine.loader import max_seq_length
from mlx_serve.engine.reranker import CrossEncoder, cross_encoder_head
from mlx_serve.engine.tokenizer import TextTokenizer
from mlx_serve.store import torch_pickle


def labels_of(config: dict[str, Any]) -> tuple[str, ...]:
    """The labels in id order: id2label, else LABEL_0.. for num_labels."""
    id2label = config.get("id2label") or {}
    if id2label:
        return tuple(str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k)))
    return tuple(f"LABEL_{i}" for i in range(int(config.get("num_labels", 2))))


def encoder_model(
    ctx: LoadContext,
    forward: Forward,
    classifier: Callable[[], Callable[..., Any]],
    arrays: Callable[[], list[Any]],
    hidden_size: int,
    pad_id: int,
    logits: Callable[[], Logits] | None = None,
) -> Embedder | CrossEncoder | Classifier:
    """`logits` builds the family's masked-LM head, for a SPLADE layout (None: the family has none)."""
    tokenizer = TextTokenizer(ctx.path / "tokenizer.json", max_seq_length(ctx.path, ctx.config))
    if ctx.type == "embedding":
        if ctx.layout.splade is not None and logits is None:
            raise UnsupportedArchitecture(
                f"{ctx.config.get('model_type')} models have no masked-LM head for SPLADE here"
            )
        heads = token_heads(ctx.path, tokenizer, hidden_size)
        if ctx.layout.splade is not None and heads is not None:
            raise UnsupportedArchitecture(
                "a SPLADE model with BGE-M3's sparse or colbert head beside it: one of them would be ignored"
            )
        return Embedder(
            ctx.name,
            forward,
            tokenizer,
            ctx.layout,
            hidden_size,
            pad_id,
            arrays,
            ctx.streams,
            logits=logits() if ctx.layout.splade is not None and logits is not None else None,
            token_heads=heads,
            vocabulary=int(ctx.config.get("vocab_size", 0)),
        )
    labels = labels_of(ctx.config)
    if ctx.type == "reranker":
        runner = BatchRunner(cross_encoder_head(classifier(), len(labels)), pad_id, "right", ctx.streams)
        return CrossEncoder(ctx.name, tokenizer, runner, arrays)
    multi = ctx.config.get("problem_type") == "multi_label_classification"
    runner = BatchRunner(logits_head(classifier()), pad_id, "right", ctx.streams)
    return Classifier(ctx.name, tokenizer, runner, arrays, labels, multi)


# BGE-M3's heads, as a stored folder holds them: converted from FlagEmbedding's .pt files when pulled
# (convert_heads), into a folder of their own so that no family reads them as the model's weights.
HEADS_FOLDER = "token_heads"
SPARSE_HEAD = f"{HEADS_FOLDER}/sparse_linear.safetensors"
COLBERT_HEAD = f"{HEADS_FOLDER}/colbert_linear.safetensors"
HEAD_PICKLES = {"sparse_linear.pt": SPARSE_HEAD, "colbert_linear.pt": COLBERT_HEAD}


def convert_heads(folder: Path) -> None:
    """FlagEmbedding's sparse_linear.pt and colbert_linear.pt -> safetensors (read without PyTorch and
    without running the pickle: store/torch_pickle.py), the .pt files removed."""
    for pickle_name, target in HEAD_PICKLES.items():
        source = folder / pickle_name
        if not source.exists():
            continue
        try:
            tensors = torch_pickle.load(source)
        except torch_pickle.NotTensors as exc:
            raise UnsupportedArchitecture(str(exc)) from None
        if set(tensors) != {"weight", "bias"}:
            raise UnsupportedArchitecture(
                f"{pickle_name} holds {sorted(tensors)}, not a Linear layer's weight and bias"
            )
        (folder / HEADS_FOLDER).mkdir(exist_ok=True)
        mx.save_safetensors(str(folder / target), {k: mx.array(v) for k, v in tensors.items()})
        source.unlink()


def token_heads(folder: Path, tokenizer: TextTokenizer, hidden_size: int) -> TokenHeads | None:
    """BGE-M3's sparse and colbert heads, if the folder has them (None: it has neither)."""
    heads: dict[str, tuple[mx.array, mx.array]] = {}
    for key, file, width in (("sparse", SPARSE_HEAD, 1), ("colbert", COLBERT_HEAD, None)):
        if not (folder / file).exists():
            continue
        w = mx.load(str(folder / file))
        weight, bias = w.get("weight"), w.get("bias")
        if weight is None or bias is None or weight.ndim != 2 or weight.shape[1] != hidden_size:
            raise UnsupportedArchitecture(f"{file} is not a Linear layer over the model's {hidden_size} dimensions")
        if (width is not None and weight.shape[0] != width) or bias.shape != (weight.shape[0],):
            raise UnsupportedArchitecture(f"{file}'s weight and bias do not make a {key} head")
        heads[key] = (mx.contiguous(weight.astype(mx.float32).T), bias.astype(mx.float32))
    if not heads:
        return None
    return TokenHeads(heads.get("sparse"), heads.get("colbert"), special_ids(folder, tokenizer))


def special_ids(folder: Path, tokenizer: TextTokenizer) -> frozenset[int]:
    """The ids of the cls, eos, pad and unk tokens, as transformers' tokenizer names them (its
    tokenizer_config.json and special_tokens_map.json): those FlagEmbedding drops from sparse vectors."""
    named: dict[str, Any] = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / file
        if path.exists():
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                named.update({k: v for k, v in data.items() if k not in named})
    ids = set()
    for key in ("cls_token", "eos_token", "pad_token", "unk_token"):
        token = named.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        found = tokenizer.token_id(token) if isinstance(token, str) else None
        if found is not None:
            ids.add(found)
    return frozenset(ids)
