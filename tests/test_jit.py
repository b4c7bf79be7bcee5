"""Kernels built for this CPU (jit.py): real MLX, real g++, each case in a fresh process, since the
compiler shim and MLX's kernel cache are set once per process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import MINILM_TEXTS, cosine

# Embeds MINILM_TEXTS with the packaged MiniLM and reports what the JIT set-up did.
CHILD = """
import json, os, shutil, sys
from mlx_serve import cpu
from mlx_serve.engine import load_embedder
from mlx_serve.engine.loader import stream_count
from mlx_serve.store.store import builtin_model_dir
status = cpu.configure(stream_count())  # as the server does, once at start
vectors = load_embedder("m", builtin_model_dir()).embed(json.loads(sys.argv[1]), 4096).vectors
print(json.dumps({"native": status.native, "reason": status.reason, "gxx": shutil.which("g++"),
                  "tmpdir": os.environ.get("TMPDIR"), "vectors": vectors.tolist()}))
"""

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(sys.platform != "linux", reason="native kernels are a Linux CPU feature"),
]


@pytest.fixture(autouse=True)
def _gxx() -> None:
    # `make install` puts g++ here (make cpu-deps); its absence is a failed install, not a reason to skip.
    assert shutil.which("g++"), "g++ is missing: run `make cpu-deps` (the fast CPU path needs it)"


def embed_in_child(tmp_path: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in {"MLX_SERVE_JIT_FLAGS", "TMPDIR"}}
    clean["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(MINILM_TEXTS)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["vectors"] = np.array(out["vectors"])
    return out


def test_kernels_are_built_for_this_cpu_and_cached_apart(tmp_path: Path, minilm_reference: np.ndarray) -> None:
    out = embed_in_child(tmp_path)
    assert out["native"], out["reason"]
    shim = Path(out["gxx"])  # the g++ that MLX's `g++ ...` command now finds first
    assert shim.is_relative_to(tmp_path / "cache" / "mlx-serve") and "-march=native" in shim.read_text()
    built = list(Path(out["tmpdir"]).rglob("*.so"))
    assert built and all(p.is_relative_to(tmp_path / "cache" / "mlx-serve") for p in built)
    assert cosine(out["vectors"], minilm_reference).min() >= 0.9999


def test_off_leaves_mlx_alone_with_the_same_vectors(tmp_path: Path, minilm_reference: np.ndarray) -> None:
    out = embed_in_child(tmp_path, MLX_SERVE_JIT_FLAGS="off")
    assert not out["native"] and "MLX_SERVE_JIT_FLAGS" in out["reason"]
    assert out["gxx"] == shutil.which("g++") and out["tmpdir"] is None
    assert not (tmp_path / "cache" / "mlx-serve").exists()
    assert cosine(out["vectors"], minilm_reference).min() >= 0.9999


def test_flags_the_compiler_refuses_fall_back_instead_of_failing(tmp_path: Path, minilm_reference: np.ndarray) -> None:
    out = embed_in_child(tmp_path, MLX_SERVE_JIT_FLAGS="-fno-such-flag-anywhere")
    assert not out["native"] and "unavailable" in out["reason"]
    assert out["gxx"] == shutil.which("g++")  # the broken shim is never put on PATH
    assert cosine(out["vectors"], minilm_reference).min() >= 0.9999


def test_without_a_compiler_the_portable_kernels_serve(tmp_path: Path, minilm_reference: np.ndarray) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "sh").symlink_to("/bin/sh")  # MLX runs its compiler probe through the shell
    out = embed_in_child(tmp_path, PATH=str(empty))
    assert not out["native"] and out["reason"].startswith("no g++") and out["gxx"] is None
    assert cosine(out["vectors"], minilm_reference).min() >= 0.9999
