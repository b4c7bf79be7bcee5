"""Service files rendered from the settings, and the systemctl/launchctl calls each verb makes.

No service manager runs here, so `systemctl` and `launchctl` are recording stand-ins on PATH (the only
stand-ins in the suite); the unit itself goes through the real `systemd-analyze verify`.
"""

from __future__ import annotations

import json
import os
import platform
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.process


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for tool in ("systemctl", "launchctl"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n')
        script.chmod(0o755)
    return bin_dir, calls


def service(home: Path, recorder: tuple[Path, Path], *args: str, env: dict[str, str] | None = None):
    bin_dir, calls = recorder
    path = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "XDG_CONFIG_HOME": str(home / ".config")}
    out = run_cli(home, "service", *args, env={**path, **(env or {})}, timeout=60)
    recorded = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return out, recorded


def unit_file(home: Path) -> Path:
    return home / ".config" / "systemd" / "user" / "mlx-serve@.service"


def plist_file(home: Path, port: int) -> Path:
    return home / "Library" / "LaunchAgents" / f"com.mlx-serve.{port}.plist"


def write_config(home: Path, text: str) -> None:
    (home / ".mlx-serve").mkdir(exist_ok=True)
    (home / ".mlx-serve" / "config.yaml").write_text(text)


def unit_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.skipif(platform.system() != "Linux", reason="systemd-analyze exists only on Linux")
def test_rendered_unit_passes_systemd_analyze_verify(home: Path, recorder, tmp_path: Path) -> None:
    out, _ = service(home, recorder, "install", "--port", "8123", "--platform", "linux")
    assert out.returncode == 0, out.stderr
    instance = tmp_path / "verify" / "mlx-serve@8123.service"
    instance.parent.mkdir()
    shutil.copy(unit_file(home), instance)
    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir(mode=0o700)
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(instance)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)},
    )
    # verify exits 0 on mere warnings, so its output must be empty too.
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr


def test_unit_carries_the_installed_command_environment_and_settings(home: Path, recorder) -> None:
    out, calls = service(home, recorder, "install", "--port", "8123", "--platform", "linux")
    assert out.returncode == 0
    values = unit_values(unit_file(home).read_text())
    exe = values["ExecStart"][0].split()[0]
    assert Path(exe).is_absolute() and os.access(exe, os.X_OK)
    assert values["ExecStart"][0].endswith("start --foreground --port %i")
    assert any(v.startswith("PATH=") for v in values["Environment"])
    assert "MLX_SERVE_MANAGED_BY=systemd" in values["Environment"]
    assert values["Restart"] == ["on-failure"] and values["RestartSec"] == ["5"]
    assert int(values["TimeoutStopSec"][0]) > 30  # beyond graceful_timeout
    assert values["WantedBy"] == ["default.target"]
    assert calls == [
        "systemctl --user daemon-reload",
        "systemctl --user disable mlx-serve@8123.service",  # auto_start is false by default
        "systemctl --user try-restart mlx-serve@8123.service",
    ]


def test_settings_changes_show_up_in_both_files(home: Path, recorder) -> None:
    write_config(
        home, "graceful_timeout: 50\nservice:\n  auto_start: true\n  restart_on_failure: false\n  restart_delay: 9\n"
    )
    out, calls = service(home, recorder, "install", "--port", "8124", "--platform", "linux")
    assert out.returncode == 0
    values = unit_values(unit_file(home).read_text())
    assert values["Restart"] == ["no"] and values["RestartSec"] == ["9"] and values["TimeoutStopSec"] == ["65"]
    assert "systemctl --user enable mlx-serve@8124.service" in calls

    out, calls = service(home, recorder, "install", "--port", "8124", "--platform", "macos")
    assert out.returncode == 0
    plist = plistlib.loads(plist_file(home, 8124).read_bytes())
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is False
    assert plist["ThrottleInterval"] == 9 and plist["ExitTimeOut"] == 65


def test_plist_parses_and_carries_what_launchd_needs(home: Path, recorder) -> None:
    out, calls = service(home, recorder, "install", "--port", "8125", "--platform", "macos")
    assert out.returncode == 0, out.stderr
    plist = plistlib.loads(plist_file(home, 8125).read_bytes())
    assert plist["Label"] == "com.mlx-serve.8125"
    assert Path(plist["ProgramArguments"][0]).is_absolute()
    assert plist["ProgramArguments"][1:] == ["start", "--foreground", "--port", "8125"]
    assert plist["RunAtLoad"] is False
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restart after a crash, not after a stop
    assert plist["ThrottleInterval"] == 5 and plist["ExitTimeOut"] > 30
    log = str(home / ".mlx-serve" / "logs" / "mlx-serve-8125.log")
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == log
    assert plist["EnvironmentVariables"]["MLX_SERVE_MANAGED_BY"] == "launchd"
    uid = os.getuid()
    assert calls == [
        f"launchctl bootout gui/{uid}/com.mlx-serve.8125",
        f"launchctl disable gui/{uid}/com.mlx-serve.8125",
        f"launchctl bootstrap gui/{uid} {plist_file(home, 8125)}",
    ]


@pytest.mark.parametrize(
    ("verb", "expected"),
    [
        ("start", ["systemctl --user start mlx-serve@8126.service"]),
        ("stop", ["systemctl --user stop mlx-serve@8126.service"]),
        ("enable", ["systemctl --user enable mlx-serve@8126.service"]),
        ("disable", ["systemctl --user disable mlx-serve@8126.service"]),
        ("status", ["systemctl --user status --no-pager mlx-serve@8126.service"]),
    ],
)
def test_systemd_verbs(home: Path, recorder, verb: str, expected: list[str]) -> None:
    out, calls = service(home, recorder, verb, "--port", "8126", "--platform", "linux")
    assert calls == expected
    assert out.returncode == (3 if verb == "status" else 0)  # status: the server itself is not running


@pytest.mark.parametrize(
    ("verb", "expected"),
    [
        ("start", ["bootstrap gui/{uid} {plist}", "kickstart gui/{uid}/com.mlx-serve.8127"]),
        ("stop", ["bootout gui/{uid}/com.mlx-serve.8127"]),
        ("enable", ["enable gui/{uid}/com.mlx-serve.8127"]),
        ("disable", ["disable gui/{uid}/com.mlx-serve.8127"]),
        ("status", ["print gui/{uid}/com.mlx-serve.8127"]),
    ],
)
def test_launchd_verbs(home: Path, recorder, verb: str, expected: list[str]) -> None:
    out, calls = service(home, recorder, verb, "--port", "8127", "--platform", "macos")
    fill = {"uid": os.getuid(), "plist": plist_file(home, 8127)}
    assert calls == ["launchctl " + e.format(**fill) for e in expected]
    assert out.returncode == (3 if verb == "status" else 0)


def test_reinstall_rewrites_and_uninstall_removes(home: Path, recorder) -> None:
    service(home, recorder, "install", "--port", "8128", "--platform", "linux")
    write_config(home, "service:\n  restart_delay: 11\n")
    out, calls = service(home, recorder, "install", "--port", "8128", "--platform", "linux")
    assert unit_values(unit_file(home).read_text())["RestartSec"] == ["11"]
    assert calls[0] == "systemctl --user daemon-reload"

    out, calls = service(home, recorder, "uninstall", "--port", "8128", "--platform", "linux")
    assert out.returncode == 0 and not unit_file(home).exists()
    assert calls == [
        "systemctl --user stop mlx-serve@8128.service",
        "systemctl --user disable mlx-serve@8128.service",
        "systemctl --user daemon-reload",
    ]

    service(home, recorder, "install", "--port", "8128", "--platform", "macos")
    out, calls = service(home, recorder, "uninstall", "--port", "8128", "--platform", "macos")
    assert out.returncode == 0 and not plist_file(home, 8128).exists()
    assert calls[0] == f"launchctl bootout gui/{os.getuid()}/com.mlx-serve.8128"


def test_dry_run_prints_and_touches_nothing(home: Path, recorder) -> None:
    for name in ("linux", "macos"):
        out, calls = service(home, recorder, "install", "--port", "8129", "--platform", name, "--dry-run")
        assert out.returncode == 0 and calls == []
        assert "--foreground" in out.stdout and "# would run:" in out.stdout
    assert not unit_file(home).exists() and not plist_file(home, 8129).exists()


def test_windows_is_not_supported(home: Path, monkeypatch, capsys) -> None:
    from mlx_serve import cli

    monkeypatch.setattr(platform, "system", lambda: "Windows")
    assert cli.main(["service", "install"]) == 1
    assert "not supported on Windows" in capsys.readouterr().err


def test_stop_goes_through_the_manager_of_a_managed_server(home: Path, recorder, start_server) -> None:
    """A server started by systemd must be stopped by systemd, or it would be restarted."""
    bin_dir, calls = recorder
    path = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = start_server(env={"MLX_SERVE_MANAGED_BY": "systemd", **path})
    pid_path = home / ".mlx-serve" / f"mlx-serve-{server.port}.pid"
    assert json.loads(pid_path.read_text())["manager"] == "systemd"
    out = run_cli(home, "stop", "--port", str(server.port), env=path)
    assert out.returncode == 0, out.stderr
    assert calls.read_text().splitlines() == [f"systemctl --user stop mlx-serve@{server.port}.service"]
    assert server.proc.poll() is None, "mlx-serve itself must not have signalled a managed server"
    assert server.stop() == 0
