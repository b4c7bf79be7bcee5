"""Load an optimized BLAS before MLX on Linux.

The Linux `mlx[cpu]` wheel links the netlib reference BLAS it bundles (about 5 GFLOP/s for an fp32
matmul). Loading OpenBLAS into the process with RTLD_GLOBAL before the first `import mlx.core` makes
MLX resolve its BLAS symbols there instead: some 30x faster. This must run before MLX is imported,
so it reads only the environment (`MLX_SERVE_BLAS`: a library path, or `off`), never the settings tree.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "MLX_SERVE_BLAS"

# Where distributions put a pthread OpenBLAS that exports the standard BLAS/CBLAS symbols.
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib/libopenblas.so.0",
)

HINT = (
    "MLX is using its bundled reference BLAS, which is about 30x slower on CPU. "
    "Install OpenBLAS (Debian/Ubuntu: `sudo apt-get install libopenblas0-pthread`) "
    f"or point {ENV_VAR} at a BLAS library."
)


@dataclass(frozen=True)
class BlasStatus:
    """What `preload` did: the library loaded, or why none was."""

    path: str | None
    reason: str
    library: ctypes.CDLL | None = None

    @property
    def needs_warning(self) -> bool:
        """No fast BLAS, and not by the user's choice."""
        return self.path is None and (self.reason == "not found" or self.reason.startswith(("could not", ENV_VAR)))

    @property
    def hint(self) -> str:
        """What to do, for the cause at hand: a missing library, or a path that does not work."""
        if self.reason == "not found":
            return HINT
        return (
            f"MLX is using its bundled reference BLAS (about 30x slower on CPU): {self.reason}. "
            f"Point {ENV_VAR} at a BLAS library that loads (e.g. /usr/lib/x86_64-linux-gnu/libopenblas.so.0), "
            "or unset it to look in the usual places."
        )


def preload() -> BlasStatus:
    if platform.system() != "Linux":
        return BlasStatus(None, "not needed on this platform")
    if "mlx.core" in sys.modules:
        return BlasStatus(None, "mlx was imported first")
    wanted = os.environ.get(ENV_VAR, "auto").strip()
    if wanted.lower() in {"off", "none", "0", "false"}:
        return BlasStatus(None, f"disabled by {ENV_VAR}")
    if wanted.lower() not in {"", "auto"} and not Path(wanted).exists():
        return BlasStatus(None, f"{ENV_VAR}={wanted}: no such file")
    candidates = CANDIDATES if wanted.lower() in {"", "auto"} else (wanted,)
    for candidate in candidates:
        if Path(candidate).exists():
            try:
                library = ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                return BlasStatus(None, f"could not load {candidate}: {exc}")
            return BlasStatus(candidate, "loaded", library)
    return BlasStatus(None, "not found")


def set_threads(threads: int) -> bool:
    """Threads for each BLAS call. The engine runs several CPU streams at once, each calling the BLAS:
    giving every call all cores would oversubscribe them (measured: 1 thread per stream on 2 cores is
    some 15% faster than 2). Respects an OPENBLAS_NUM_THREADS the user set."""
    setter = getattr(STATUS.library, "openblas_set_num_threads", None)
    if setter is None or "OPENBLAS_NUM_THREADS" in os.environ:
        return False
    setter(max(1, threads))
    return True


STATUS = preload()
