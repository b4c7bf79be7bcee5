"""Kernels compiled for this CPU: `mx.compile` on Linux, built with the machine's vector instructions.

On a CPU, `mx.compile` writes each fused kernel as C++ and builds it by running `g++ -O3` from PATH.
The Linux wheel's headers then target baseline x86-64: every fused multiply-add is a libm call and no
loop is vectorised, so an exp costs about 20 ns an element. mlx-serve puts a small `g++` first on
PATH that adds the flags below (`-march=native`, and enough inlining for MLX's exp and erf to
vectorise): compiled softmax and GELU then run 3-5x faster. The kernels go to a cache of their own,
keyed by the flags and this CPU, so they never mix with kernels built otherwise.

`MLX_SERVE_JIT_FLAGS` replaces the flags, or `off` leaves MLX's build alone. Without g++, MLX runs
the same code uncompiled.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "MLX_SERVE_JIT_FLAGS"
FLAGS = (
    "-march=native -fno-math-errno -fno-trapping-math "
    "--param early-inlining-insns=1000 --param max-inline-insns-auto=1000"
)
HINT = "install a C++ compiler (Debian/Ubuntu: `sudo apt-get install g++`) for 2-3x faster CPU inference"


@dataclass(frozen=True)
class JitStatus:
    """What `enable` did: whether compiled kernels are built for this CPU, and if not, why."""

    native: bool
    reason: str
    cache_dir: Path | None = None

    @property
    def needs_warning(self) -> bool:
        """Slow kernels the user did not ask for: no compiler, or flags it refused."""
        return not self.native and self.reason.startswith(("no g++", "native kernels unavailable"))

    @property
    def hint(self) -> str:
        """What to do, for the cause at hand: no compiler, or a compiler that refused the flags."""
        if self.reason.startswith("no g++"):
            return HINT
        return (
            f"g++ could not build kernels with {ENV_VAR}={os.environ.get(ENV_VAR, FLAGS)!r} ({self.reason}); "
            f"set {ENV_VAR} to flags this compiler accepts, or to off"
        )


_status: JitStatus | None = None  # PATH and TMPDIR are process-wide: set them once per process


def enable() -> JitStatus:
    """Route MLX's kernel builds through the native-flags compiler (once per process; idempotent)."""
    global _status
    if _status is None:
        _status = _enable()
    return _status


def status() -> JitStatus | None:
    """What `enable` did in this process, or None if it has not run."""
    return _status


def _enable() -> JitStatus:
    if platform.system() != "Linux":
        return JitStatus(False, "not needed on this platform")
    flags = os.environ.get(ENV_VAR, FLAGS).strip()
    if flags.lower() in {"off", "none", "0", "false"}:
        return JitStatus(False, f"disabled by {ENV_VAR}")
    compiler = shutil.which("g++")
    if compiler is None:
        return JitStatus(False, "no g++ on PATH (MLX runs uncompiled)")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlx-serve"
    tag = hashlib.sha256(f"{compiler}\n{flags}\n{_cpu_signature()}".encode()).hexdigest()[:12]
    bin_dir, cache_dir = base / "jit-bin" / tag, base / "jit-cache" / tag
    shim = bin_dir / "g++"
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        script = f'#!/bin/sh\nexec {shlex.quote(compiler)} {flags} "$@"\n'
        if not shim.exists() or shim.read_text() != script:
            tmp = shim.with_suffix(f".{os.getpid()}")
            tmp.write_text(script)
            tmp.chmod(0o755)
            tmp.replace(shim)
        # Proves the flags and that the shim can run here (a noexec home would fail the build later).
        subprocess.run(
            [str(shim), "-x", "c++", "-c", "-o", os.devnull, "-"],
            input="int f(float* a, int n) { for (int i = 0; i < n; ++i) a[i] *= 2.f; return n; }",
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return JitStatus(False, f"native kernels unavailable: {exc}")
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    # MLX keeps built kernels under the temporary directory, by kernel name only: a directory of our own
    # keeps them apart from kernels built with other flags (and from another machine's CPU).
    os.environ["TMPDIR"] = str(cache_dir)
    return JitStatus(True, flags, cache_dir)


def _cpu_signature() -> str:
    """The CPU model and its instruction set extensions: what `-march=native` compiles for."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in info.splitlines() if line.startswith(wanted)}))
