"""`make install`'s choice of Python (scripts/pick-python), with stand-in Pythons on PATH: Apple's
python3 is 3.9, which mlx-serve cannot run on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pick-python"


def fake_python(folder: Path, name: str, version: tuple[int, int]) -> Path:
    """A `python` that claims `version` to `-c` probes (a real one runs for what it does not fake)."""
    path = folder / name
    major, minor = version
    path.write_text(
        "#!/bin/sh\n"
        f'case "$2" in *version_info\\ \\<*) exit {int(version < (3, 10))};; '
        f'*"%d.%d"*) echo {major}.{minor}; exit 0;; esac\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    path.chmod(0o755)
    return path


def pick(tmp_path: Path, *args: str, python: str | None = None) -> subprocess.CompletedProcess:
    # Only the stand-ins and the tools the script uses: not this machine's own Pythons.
    tools = tmp_path / "tools"
    if not tools.exists():
        tools.mkdir()
        for tool in ("cat", "rm"):
            (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": f"{tmp_path / 'bin'}:{tools}", "HOME": str(tmp_path)}
    if python:
        env["PYTHON"] = python
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    return tmp_path / "bin"


def test_the_newest_python_of_3_10_or_later_is_picked(tmp_path: Path, bin_dir: Path) -> None:
    fake_python(bin_dir, "python3", (3, 9))  # Apple's
    fake_python(bin_dir, "python3.11", (3, 11))
    out = pick(tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "python3.11"
    fake_python(bin_dir, "python3.12", (3, 12))
    assert pick(tmp_path).stdout.strip() == "python3.12"


def test_without_one_it_says_what_to_install(tmp_path: Path, bin_dir: Path) -> None:
    fake_python(bin_dir, "python3", (3, 9))
    out = pick(tmp_path)
    assert out.returncode == 1
    assert "Python 3.10 or newer" in out.stderr and "brew install python@3.12" in out.stderr
    asked = pick(tmp_path, python=str(bin_dir / "python3"))
    assert asked.returncode == 1 and "is 3.9" in asked.stderr


def test_a_venv_of_a_too_old_python_is_rebuilt(tmp_path: Path, bin_dir: Path) -> None:
    fake_python(bin_dir, "python3.11", (3, 11))
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    fake_python(venv / "bin", "python", (3, 9))  # made by an earlier `make install` with Apple's python3
    out = pick(tmp_path, str(venv))
    assert out.returncode == 0 and not venv.exists() and "rebuilding" in out.stderr


def test_a_venv_is_rebuilt_for_the_python_asked_for_and_kept_otherwise(tmp_path: Path, bin_dir: Path) -> None:
    py311, py312 = fake_python(bin_dir, "python3.11", (3, 11)), fake_python(bin_dir, "python3.12", (3, 12))
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(py311, venv / "bin" / "python")
    assert pick(tmp_path, str(venv)).returncode == 0 and venv.exists()  # a good venv stays
    assert pick(tmp_path, str(venv), python=str(py311)).returncode == 0 and venv.exists()
    out = pick(tmp_path, str(venv), python=str(py312))
    assert out.returncode == 0 and not venv.exists() and "PYTHON=" in out.stderr
