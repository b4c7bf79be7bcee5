"""Service managers (systemd user units, launchd agents): names, and the calls that drive them."""

from __future__ import annotations

import os
import subprocess
import sys


def systemd_unit(port: int) -> str:
    return f"mlx-serve@{port}.service"


def launchd_label(port: int) -> str:
    return f"com.mlx-serve.{port}"


def launchd_domain() -> str:
    return f"gui/{os.getuid()}"


def stop_managed(manager: str, port: int) -> int:
    """Stop through the manager: a SIGTERM from us would count as a crash and be restarted."""
    if manager == "systemd":
        cmd = ["systemctl", "--user", "stop", systemd_unit(port)]
    elif manager == "launchd":
        cmd = ["launchctl", "bootout", f"{launchd_domain()}/{launchd_label(port)}"]
    else:
        print(f"mlx-serve: port {port} is run by an unknown manager {manager!r}", file=sys.stderr)
        return 1
    done = subprocess.run(cmd, check=False)
    print(
        f"port {port}: stopped through {manager} ({' '.join(cmd)})"
        if done.returncode == 0
        else f"port {port}: `{' '.join(cmd)}` failed with code {done.returncode}"
    )
    return 0 if done.returncode == 0 else 1
