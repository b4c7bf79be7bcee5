"""The Python floor pyproject declares is the one the code needs: vermin reads every module for the
syntax, modules and names each version added (datetime.UTC is 3.11, for one)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_code_runs_on_the_declared_python_floor(tmp_path: Path) -> None:
    found = re.search(r'^requires-python = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found, "pyproject.toml declares no requires-python"
    floor = found.group(1)  # (read by hand: tomllib is 3.11's)
    assert floor.startswith(">="), floor
    version = floor.removeprefix(">=")
    vermin = [str(Path(sys.executable).with_name("vermin")), "--no-tips", "--eval-annotations", "--violations"]
    done = subprocess.run(
        [*vermin, f"--target={version}-", str(ROOT / "src" / "mlx_serve")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    # And the check can fail: a module using datetime.UTC is refused for 3.10.
    probe = tmp_path / "probe.py"
    probe.write_text("import datetime\nprint(datetime.UTC)\n")
    refused = subprocess.run([*vermin, "--target=3.10-", str(probe)], capture_output=True, text=True)
    assert refused.returncode != 0 and "3.11" in refused.stdout
