"""Dynamic batching over HTTP, against a real `mlx-serve start --foreground` on all-MiniLM-L6-v2.

(a) 16 concurrent clients with one short text each, against the same 16 requests one after another.
(b) 8 concurrent clients with 16 texts each, against sentence-transformers encoding the same 128 texts
    in-process (its best case: no HTTP, one big batch).
Prints times and ratios; run with `make bench`.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from embed_throughput import make_texts, median_seconds
from peer import peer_seconds

MODEL = "all-MiniLM-L6-v2"
PAIRS = 9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, texts: list[str]) -> int:
    body = json.dumps({"model": MODEL, "input": texts}).encode()
    with urllib.request.urlopen(f"{url}/v1/embeddings", data=body, timeout=300) as resp:
        return json.load(resp)["usage"]["total_tokens"]


def main() -> None:
    port = free_port()
    home = tempfile.mkdtemp(prefix="mlx-serve-bench-")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLX_SERVE_")},
        "HOME": home,
        "MLX_SERVE_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mlx_serve", "start", "--foreground", "--port", str(port), "--preload", MODEL],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)

        singles = [[t] for t in make_texts(16, 12, seed=1)]
        with ThreadPoolExecutor(16) as pool:
            # Pairs, one of each kind in turn, so that the shared machine's drift hits both sides alike.
            pairs = [
                (
                    median_seconds(lambda: [post(url, t) for t in singles], 1, warmup=1),
                    median_seconds(lambda: list(pool.map(lambda t: post(url, t), singles)), 1, warmup=1),
                )
                for _ in range(PAIRS)
            ]
        sequential = statistics.median(s for s, _ in pairs)
        concurrent = statistics.median(c for _, c in pairs)
        ratios = sorted(s / c for s, c in pairs)
        print(
            f"(a) 16 single-text requests: one after another {sequential * 1000:.0f} ms, "
            f"16 concurrent clients {concurrent * 1000:.0f} ms -> {statistics.median(ratios):.2f}x "
            f"(median of {PAIRS} pairs; range {ratios[0]:.2f}-{ratios[-1]:.2f}x)"
        )

        chunks = [make_texts(16, 125, seed=10 + i) for i in range(8)]
        all_texts = [t for chunk in chunks for t in chunk]
        tokens = sum(post(url, chunk) for chunk in chunks)
        with ThreadPoolExecutor(8) as pool:
            http = median_seconds(lambda: list(pool.map(lambda c: post(url, c), chunks)), 3, warmup=1)

        in_process = peer_seconds(all_texts, len(all_texts), 3)
        print(
            f"(b) 8 clients x 16 texts ({tokens} tokens): mlx-serve over HTTP {tokens / http:,.0f} tokens/s, "
            f"sentence-transformers in-process {tokens / in_process:,.0f} tokens/s -> ratio {in_process / http:.2f}"
        )
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
