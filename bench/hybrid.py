"""What sparse and multi-vector outputs cost beside a dense vector, on the same model and texts, in one run.

- BGE-M3's layout (an XLM-RoBERTa encoder with its sparse and colbert heads): dense alone, dense + sparse,
  dense + sparse + multivector, through the engine as the server runs them (heads on the device, the
  sparse vectors and the per-token vectors cut on the host).
- SPLADE (a BERT masked-LM + SpladePooling): its sparse output against the same encoder pooled to one
  dense vector, i.e. what the vocabulary-sized head and pooling add; and sentence-transformers'
  SparseEncoder on PyTorch, the peer, in a process of its own.

Random weights in the real shapes (12 layers x 768 by default; `--layers 24 --hidden 1024` is BGE-M3's
own), the packaged MiniLM's WordPiece tokenizer (30,522 ids). Random weights make SPLADE vectors far
denser than a trained model's (about half the vocabulary against 100-300 ids), so the sparse figures here
are a worst case. Also prints the JSON bytes each output adds per text.

Usage: python bench/hybrid.py [--texts 64] [--words 125] [--layers 12] [--hidden 768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

import mlx_serve  # noqa: F401  (loads the fast BLAS before MLX)
from embed_throughput import make_texts, median_seconds
from mlx_serve.engine.heads import convert_heads
from mlx_serve.engine.loader import load_model
from mlx_serve.store.store import builtin_model_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUDGET = 16384


def build(root: Path, layers: int, hidden: int) -> tuple[Path, Path, Path]:
    """bge-m3-like, splade, and the splade's encoder as a dense (mean pooling) model: in a child process,
    so that PyTorch never shares this process's BLAS (see peer.py)."""
    script = f"""
import json, shutil, sys, torch
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from tests import tiny_models
from transformers import BertConfig, BertForMaskedLM, XLMRobertaConfig, XLMRobertaModel
from sentence_transformers import SparseEncoder
from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
root, tokenizer = Path({str(root)!r}), Path({str(builtin_model_dir())!r})
shape = dict(hidden_size={hidden}, num_hidden_layers={layers}, num_attention_heads={hidden // 64},
             intermediate_size={4 * hidden}, vocab_size=30522)
m3 = root / "bge-m3"; m3.mkdir()
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(tokenizer / f, m3 / f)
XLMRobertaModel(XLMRobertaConfig(max_position_embeddings=514, pad_token_id=0, **shape)).save_pretrained(m3)
tiny_models.sentence_transformers_files(m3, {hidden}, "cls", max_seq_length=512)
torch.save(torch.nn.Linear({hidden}, 1).state_dict(), m3 / "sparse_linear.pt")
torch.save(torch.nn.Linear({hidden}, {hidden}).state_dict(), m3 / "colbert_linear.pt")
mlm = root / "mlm"; mlm.mkdir()
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(tokenizer / f, mlm / f)
BertForMaskedLM(BertConfig(max_position_embeddings=512, **shape)).save_pretrained(mlm)
SparseEncoder(modules=[MLMTransformer(str(mlm)), SpladePooling("max")]).save(str(root / "splade"))
dense = root / "dense"; shutil.copytree(root / "splade", dense)
for f in ("modules.json", "config_sentence_transformers.json"):
    (dense / f).unlink()
shutil.rmtree(dense / "1_SpladePooling")
tiny_models.sentence_transformers_files(dense, {hidden}, "mean", normalize=False, max_seq_length=512)
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    convert_heads(root / "bge-m3")
    return root / "bge-m3", root / "splade", root / "dense"


def peer(folder: Path, texts: list[str], repeats: int) -> float:
    script = f"""
import json, statistics, sys, time
from sentence_transformers import SparseEncoder
texts = json.loads(sys.stdin.read())
model = SparseEncoder({str(folder)!r}, device="cpu")
model.encode(texts, batch_size=32)
times = []
for _ in range({repeats}):
    start = time.perf_counter(); model.encode(texts, batch_size=32); times.append(time.perf_counter() - start)
print(statistics.median(times))
"""
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(texts), capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def run(model: Any, outputs: list[str], texts: list[str]) -> dict[str, Any]:
    seqs = model.tokenize(texts)
    return model.split(model.view(outputs).run(seqs, BUDGET), seqs, outputs)


def json_bytes(outputs: dict) -> dict[str, float]:
    """The JSON bytes of each output per text, as /v1/embeddings writes them (orjson, numpy arrays)."""
    out = {}
    if "dense" in outputs:
        out["dense"] = sum(len(orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY)) for v in outputs["dense"])
    if "sparse" in outputs:
        out["sparse"] = sum(
            len(orjson.dumps({"indices": s.indices, "values": s.values}, option=orjson.OPT_SERIALIZE_NUMPY))
            for s in outputs["sparse"]
        )
    if "multivector" in outputs:
        out["multivector"] = sum(
            len(orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY)) for v in outputs["multivector"]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--words", type=int, default=125)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = make_texts(args.texts, args.words)
    root = Path(tempfile.mkdtemp())
    try:
        m3_dir, splade_dir, dense_dir = build(root, args.layers, args.hidden)
        m3 = load_model("bge-m3", m3_dir, type="embedding")
        tokens = sum(len(s) for s in m3.tokenize(texts))
        print(f"{args.texts} texts, {tokens} tokens; encoders {args.layers} x {args.hidden}; budget {BUDGET}")
        print(f"{'bge-m3 layout':<34}{'seconds':>9}{'vs dense':>10}   JSON bytes per text")
        base = None
        for outputs in (["dense"], ["dense", "sparse"], ["dense", "sparse", "multivector"]):
            seconds = median_seconds(lambda o=outputs: run(m3, o, texts), args.repeats, warmup=1)
            base = base or seconds
            sizes = ", ".join(f"{k} {v / len(texts):,.0f}" for k, v in json_bytes(run(m3, outputs, texts)).items())
            print(f"{' + '.join(outputs):<34}{seconds:>9.3f}{seconds / base:>9.2f}x   {sizes}")
        splade = load_model("splade", splade_dir, type="embedding")
        dense = load_model("dense", dense_dir, type="embedding")
        dense_s = median_seconds(lambda: run(dense, ["dense"], texts), args.repeats, warmup=1)
        sparse_s = median_seconds(lambda: run(splade, ["sparse"], texts), args.repeats, warmup=1)
        vectors = run(splade, ["sparse"], texts)
        nonzero = sum(len(s.indices) for s in vectors["sparse"]) / len(texts)
        peer_s = peer(splade_dir, texts, args.repeats)
        print(f"{'splade (same encoder)':<34}{'seconds':>9}{'vs dense':>10}")
        print(f"{'encoder pooled to one vector':<34}{dense_s:>9.3f}{1.0:>9.2f}x")
        print(
            f"{'SPLADE sparse (MLM head + pool)':<34}{sparse_s:>9.3f}{sparse_s / dense_s:>9.2f}x   "
            f"{nonzero:,.0f} non-zero ids per text (random weights), "
            f"{json_bytes(vectors)['sparse'] / len(texts):,.0f} JSON bytes"
        )
        print(
            f"{'SparseEncoder (PyTorch, CPU)':<34}{peer_s:>9.3f}{peer_s / dense_s:>9.2f}x   "
            f"mlx-serve / SparseEncoder: {peer_s / sparse_s:.2f}x faster"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
