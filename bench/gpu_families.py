"""Every model family on a GPU: each family's tiny random model (tests/tiny_models.py) run by mlx-serve's
engine on CUDA or Metal (dtype auto: half precision) against sentence-transformers / transformers in
float32 on the CPU. Run from the repository root: `python3 bench/gpu_families.py`; prints ALL OK or
MISMATCH. BGE-M3's reference is FlagEmbedding: where the GPU machine lacks it, `python3
bench/gpu_families.py prepare` on this machine first writes the model and its outputs to carry along.
(The test suite checks the same on the CPU, in float32, float16 and bfloat16.)"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import tiny_models
from tests.test_families import QUERY, TEXTS, reference_scores

from mlx_serve.engine.loader import load_model

EMBEDDERS: dict[str, Callable[[Path], Path]] = {
    "xlm-roberta": lambda p: tiny_models.xlm_roberta(p, "embedding", seed=31, prompts={"query": "query: "}),
    "mpnet": lambda p: tiny_models.mpnet(p, seed=34),
    "embeddinggemma": lambda p: tiny_models.embedding_gemma(p, seed=35),
    "modernbert": lambda p: tiny_models.modernbert(p, "embedding", seed=36),
}
RERANKERS: dict[str, Callable[[Path], Path]] = {
    "xlm-roberta (two labels)": lambda p: tiny_models.xlm_roberta(p, "reranker", seed=32, labels=2),
    "modernbert": lambda p: tiny_models.modernbert(p, "reranker", seed=37),
}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def main() -> int:
    from sentence_transformers import SentenceTransformer

    print("device", mx.default_device(), flush=True)
    root = Path(tempfile.mkdtemp())
    ok = True
    for name, build in EMBEDDERS.items():
        path = build(root / name.replace(" ", "-"))
        model = load_model(name, path, type="embedding")
        ours = model.embed(TEXTS, 16384).vectors
        alone = np.stack([model.embed([t], 16384).vectors[0] for t in TEXTS])
        expected = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
        worst = cosine(ours, expected).min()
        print(f"{name}: min cosine {worst:.6f}, batch vs alone {np.abs(ours - alone).max():.2e}", flush=True)
        ok &= bool(worst >= 0.999)
    for name, build in RERANKERS.items():
        path = build(root / name.split()[0])
        got = load_model(name, path, type="reranker").rerank(QUERY, TEXTS, 16384)
        diff = np.abs(got - reference_scores(path)).max()
        print(f"{name} reranker: max score difference {diff:.2e}", flush=True)
        ok &= bool(diff < 5e-3)
    ok &= sparse_and_multivector(root)
    print("ALL OK" if ok else "MISMATCH")
    return 0 if ok else 1


def sparse_and_multivector(root: Path) -> bool:
    """SPLADE against SparseEncoder, BGE-M3's heads against FlagEmbedding (if it is installed here)."""
    from sentence_transformers import SparseEncoder

    from mlx_serve.engine.heads import convert_heads

    ok = True
    path = tiny_models.splade(root / "splade", seed=41)
    model = load_model("splade", path, type="embedding")
    seqs = model.tokenize(TEXTS)
    ours = np.stack([np.zeros(300)] * len(TEXTS))
    for row, vector in zip(ours, model.split(model.run(seqs, 16384), seqs, ["sparse"])["sparse"], strict=True):
        row[vector.indices] = vector.values
    expected = SparseEncoder(str(path), device="cpu").encode(TEXTS, convert_to_tensor=True).to_dense().numpy()
    diff = np.abs(ours - expected).max() / np.abs(expected).max()
    print(f"splade: max difference {diff:.2e} of the largest weight", flush=True)
    ok &= bool(diff < 1e-2)
    prepared = Path(__file__).resolve().parent / "bge-m3-reference"  # see prepare_bge_m3
    if (prepared / "reference.npz").exists():
        path, reference = prepared / "model", np.load(prepared / "reference.npz")
    else:
        try:
            path, reference = prepare_bge_m3(root / "bge-m3")
        except ImportError:
            print("bge-m3: FlagEmbedding is not installed here, and no bench/bge-m3-reference; not checked")
            return ok
    convert_heads(path)
    model = load_model("bge-m3", path, type="embedding")
    seqs = model.tokenize(TEXTS)
    outputs = ["dense", "sparse", "multivector"]
    got = model.split(model.view(outputs).run(seqs, 16384), seqs, outputs)
    dense = cosine(got["dense"], reference["dense"]).min()
    colbert = min(cosine(v, reference[f"colbert_{i}"]).min() for i, v in enumerate(got["multivector"]))
    sparse = max(
        np.abs(s.values - reference[f"sparse_values_{i}"]).max(initial=0.0) for i, s in enumerate(got["sparse"])
    )
    same_ids = all(np.array_equal(s.indices, reference[f"sparse_ids_{i}"]) for i, s in enumerate(got["sparse"]))
    print(
        f"bge-m3: dense min cosine {dense:.6f}, multivector min cosine {colbert:.6f}, sparse same ids {same_ids}, "
        f"max weight difference {sparse:.2e}",
        flush=True,
    )
    return ok and bool(dense >= 0.999 and colbert >= 0.999 and sparse < 5e-3)


def prepare_bge_m3(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The tiny BGE-M3 and FlagEmbedding's outputs for TEXTS (raises ImportError without FlagEmbedding).
    Where the GPU machine lacks FlagEmbedding, run `python3 bench/gpu_families.py prepare` here first: it
    writes both to bench/bge-m3-reference/ (git-ignored: name it in the GPU call's carry)."""
    from FlagEmbedding import BGEM3FlagModel

    path = tiny_models.bge_m3(folder / "model", seed=43)
    out = BGEM3FlagModel(str(path), use_fp16=False, devices="cpu").encode(
        TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )
    reference = {"dense": out["dense_vecs"]}
    for i, (weights, vectors) in enumerate(zip(out["lexical_weights"], out["colbert_vecs"], strict=True)):
        ids = sorted(int(k) for k in weights)
        reference[f"sparse_ids_{i}"] = np.array(ids, dtype=np.int64)
        reference[f"sparse_values_{i}"] = np.array([weights[str(k)] for k in ids], dtype=np.float32)
        reference[f"colbert_{i}"] = vectors
    return path, reference


if __name__ == "__main__":
    if sys.argv[1:] == ["prepare"]:
        target = Path(__file__).resolve().parent / "bge-m3-reference"
        _, arrays = prepare_bge_m3(target)
        np.savez(target / "reference.npz", **arrays)
        print(f"wrote {target}")
        sys.exit(0)
    sys.exit(main())
