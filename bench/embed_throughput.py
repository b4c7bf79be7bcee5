"""MLX engine vs sentence-transformers on the packaged all-MiniLM-L6-v2, same texts, same machine, one run.

Prints tokens/s for a batch of 64 texts of about 130 tokens, the latency of one short text, and the
MLX/sentence-transformers ratios. Run with `make bench`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import mlx_serve  # noqa: F401  (loads the fast BLAS before MLX)
from mlx_serve.cpu import blas
from mlx_serve.engine import load_embedder
from mlx_serve.serving.runtime import batch_tokens
from mlx_serve.settings import load_settings
from mlx_serve.store.store import builtin_model_dir
from peer import peer_seconds

WORDS = [
    "model",
    "server",
    "embedding",
    "vector",
    "search",
    "query",
    "document",
    "rank",
    "local",
    "machine",
    "memory",
    "batch",
    "token",
    "cosine",
    "latency",
    "throughput",
    "apple",
    "silicon",
    "linux",
    "python",
    "request",
    "response",
    "cache",
]


def make_texts(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + "." for _ in range(n)]


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--words", type=int, default=125, help="about one token per word here")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model_dir = builtin_model_dir()
    assert model_dir is not None, "install the packaged model: make install"
    texts = make_texts(args.texts, args.words)
    short = ["what is the capital of france?"]

    budget = batch_tokens(load_settings().settings.max_batch_tokens)  # what the server would use
    mlx_model = load_embedder("all-MiniLM-L6-v2", model_dir)
    tokens = sum(mlx_model.embed(texts, budget).token_counts)
    mlx_batch = median_seconds(lambda: mlx_model.embed(texts, budget), args.repeats)
    mlx_one = median_seconds(lambda: mlx_model.embed(short, budget), args.repeats * 4)

    st_batch = peer_seconds(texts, len(texts), args.repeats)
    st_one = peer_seconds(short, 1, args.repeats * 4)

    print(
        f"all-MiniLM-L6-v2: {len(texts)} texts, {tokens} tokens; BLAS: {blas.STATUS.path or blas.STATUS.reason}; "
        "sentence-transformers (PyTorch, CPU) timed in a process of its own"
    )
    print(f"{'engine':<24}{'tokens/s (batch)':>18}{'one short text':>18}")
    print(f"{'mlx-serve (MLX)':<24}{tokens / mlx_batch:>18,.0f}{mlx_one * 1000:>15.1f} ms")
    print(f"{'sentence-transformers':<24}{tokens / st_batch:>18,.0f}{st_one * 1000:>15.1f} ms")
    print(
        f"ratio MLX / sentence-transformers: throughput {st_batch / mlx_batch:.2f}x, "
        f"short-text latency {st_one / mlx_one:.2f}x (above 1 = MLX faster)"
    )


if __name__ == "__main__":
    main()
