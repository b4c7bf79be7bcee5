"""What a model folder must prove before it is stored, and again before it is loaded: every promise its files
make is kept. A folder that lies once crashed the worker (a tokenizer with more ids than the embedding
table has rows: SIGSEGV), answered 200 with a vector read from outside the table (a table cut to 100
rows), answered `dimensions: 500` with 384 values, or was stored and then failed every request with a
500 (truncated weights, a 2^40 header length, a tensor claiming 100 billion rows, a malformed
tokenizer.json, 7 heads for 384 dimensions, 12 layers configured with 6 stored, `hidden_size: "384"`).

`check_folder` reads only headers and small files (it runs at every load); `prepare` (at pull) also lets
the family convert the folder and runs one tiny forward pass, whose output must be finite.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from mlx_serve.core.types import ModelType
from mlx_serve.engine import families, st_layout
from mlx_serve.store.files import RefusedFolder, safetensors_header
from mlx_serve.store.store import StoreError

INTEGERS = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "max_position_embeddings",
    "vocab_size",
    "num_key_value_heads",
    "head_dim",
)
EMBEDDINGS = re.compile(r"(?:^|\.)(?:word_embeddings|embed_tokens|tok_embeddings)\.weight$")
POSITIONS = re.compile(r"(?:^|\.)position_embeddings\.weight$")
LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


class FolderLies(ValueError):
    """A promise of the folder's files that the files do not keep: one sentence naming the file and field."""


def tensors(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Every tensor of the folder's top-level weights, from their checked headers."""
    out: dict[str, dict[str, Any]] = {}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FolderLies("the folder holds no .safetensors weights")
    for file in files:
        try:
            out.update(safetensors_header(file))
        except RefusedFolder as exc:
            raise FolderLies(str(exc)) from None
    for file in sorted(model_dir.glob("*/*.safetensors")):  # sentence-transformers' Dense modules
        try:
            safetensors_header(file)
        except RefusedFolder as exc:
            raise FolderLies(f"{file.parent.name}/{exc}") from None
    return out


def check_folder(model_dir: Path, config: dict[str, Any]) -> None:
    """FolderLies unless the config, the weights' headers and the tokenizer agree."""
    for key in INTEGERS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise FolderLies(f"config.json: {key} is {value!r}, not a whole number")
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if hidden and heads and not config.get("head_dim") and hidden % heads:
        raise FolderLies(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    weights = tensors(model_dir)
    if config.get("quantization"):
        return  # packed weights (mlx-lm's quantization): shapes are not the config's
    table = next((spec for name, spec in weights.items() if EMBEDDINGS.search(name)), None)
    if table is None:
        raise FolderLies("the weights have no token embedding table")
    rows, width = table["shape"][0], table["shape"][-1]
    if hidden and width != hidden:
        raise FolderLies(f"config.json: hidden_size is {hidden}, but the embedding table is {width} wide")
    vocab = config.get("vocab_size")
    if vocab and rows < vocab:
        raise FolderLies(f"config.json: vocab_size is {vocab}, but the embedding table has {rows} rows")
    positions = next((spec for name, spec in weights.items() if POSITIONS.search(name)), None)
    limit = config.get("max_position_embeddings")
    if positions is not None and limit and positions["shape"][0] < limit:
        raise FolderLies(
            f"config.json: max_position_embeddings is {limit}, but the position table has {positions['shape'][0]} rows"
        )
    layers = {int(m.group(1)) for name in weights if (m := LAYER.search(name))}
    wanted = config.get("num_hidden_layers")
    if wanted and len(layers) < wanted:
        raise FolderLies(f"config.json: num_hidden_layers is {wanted}, but the weights hold {len(layers)} layers")
    size = tokenizer_size(model_dir)
    if size > rows:
        raise FolderLies(f"tokenizer.json has {size} token ids, but the embedding table has {rows} rows")


def tokenizer_size(model_dir: Path) -> int:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    except Exception as exc:  # the Rust tokenizer's own parse errors
        raise FolderLies(f"tokenizer.json cannot be read: {str(exc).splitlines()[0][:200]}") from None


def prepare(staging: Path, type: ModelType, quantize: int | None) -> dict[str, Any]:
    """What a pull does to a staged folder before it is stored (store/pull.py's Prepare): the family must
    run it as `type` (else a StoreError in one sentence, and nothing is stored), it is converted if its
    family needs that, its files must keep their promises, and one tiny forward pass must be finite."""
    from mlx_serve.engine.heads import convert_heads
    from mlx_serve.engine.loader import load_model, read_config

    config = read_config(staging)
    try:
        family = families.check(config, type)
        st_layout.read(staging, default_pooling=family.default_pooling)
        if quantize and not family.quantizable:
            raise StoreError(f"quantization is for decoder models (Qwen3), not for {family.name} models")
        convert_heads(staging)
        check_folder(staging, config)
        extra = family.convert(staging, config, type, quantize) if family.convert else {}
        model = load_model(staging.name, staging, type=type, dtype="float32")
        _finite(model)
        if type == "embedding":
            extra["outputs"] = list(model.outputs)
            extra["dimensions"] = model.dimensions
    except (families.UnsupportedArchitecture, st_layout.UnsupportedLayout, FolderLies) as exc:
        raise StoreError(str(exc).replace(str(staging), "the model")) from None
    return extra


def _finite(model: Any) -> None:
    """One short input through the model: its output must hold numbers, not NaN or inf."""
    if hasattr(model, "embed"):
        out = model.embed(["a short check"], max_batch_tokens=512).vectors
        for view in (model.view([o]) for o in model.outputs[1:]):
            rows = view.run(model.tokenize(["a short check"]), max_batch_tokens=512)
            if not all(np.isfinite(part).all() for row in rows for part in row):
                raise FolderLies("the weights give NaN or infinite outputs for a short text")
    elif hasattr(model, "rerank"):
        out = model.rerank("a short check", ["a short check"], max_batch_tokens=512)
    else:
        out = model.classify(["a short check"], max_batch_tokens=512)
    if not np.isfinite(out).all():
        raise FolderLies("the weights give NaN or infinite outputs for a short text (a corrupt or overflowing model)")
