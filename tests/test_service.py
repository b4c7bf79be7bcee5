"""Service files rendered from the settings, and the systemctl/launchctl calls each verb makes.

No service manager runs here, so `systemctl` and `launchctl` are recording stand-ins on PATH (the only
stand-ins in the suite), which answer with scripted exit codes; the unit itself goes through the real
`systemd-analyze verify`. macOS runs are the CLI in this process with `platform.system()` saying Darwin.
"""

from __future__ import annotations

import json
import os
import platform
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_serve.process import service_manager as service_module

from .conftest import free_port, run_cli

pytestmark = pytest.mark.process


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    """Stand-ins that log each call, and exit with the next code in `codes` (one per line), else 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    codes = tmp_path / "codes"
    for tool in ("systemctl", "launchctl"):
        script = bin_dir / tool
        script.write_text(
            f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n'
            f'if [ -s "{codes}" ]; then code=$(head -n 1 "{codes}"); tail -n +2 "{codes}" > "{codes}.t"; '
            f'mv "{codes}.t" "{codes}"; exit "$code"; fi\n'
        )
        script.chmod(0o755)
    return bin_dir, calls


def script_codes(recorder: tuple[Path, Path], *codes: int) -> None:
    (recorder[1].parent / "codes").write_text("".join(f"{c}\n" for c in codes))


def service(home: Path, recorder: tuple[Path, Path], *args: str, env: dict[str, str] | None = None):
    bin_dir, calls = recorder
    path = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "XDG_CONFIG_HOME": str(home / ".config")}
    out = run_cli(home, "service", *args, env={**path, **(env or {})}, timeout=60)
    recorded = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return out, recorded


@pytest.fixture
def macos(home: Path, recorder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """macos(*args) -> (exit code, stdout, stderr, launchctl calls): `mlx-serve service ARGS` as on a Mac."""
    from mlx_serve import cli

    bin_dir, calls = recorder
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(service_module, "RETRY_SECONDS", 0.01)

    def run(*args: str) -> tuple[int, str, str, list[str]]:
        code = cli.main(["service", *args])
        out = capsys.readouterr()
        recorded = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return code, out.out, out.err, recorded

    return run


def unit_file(home: Path) -> Path:
    return home / ".config" / "systemd" / "user" / "mlx-serve@.service"


def plist_file(home: Path, port: int) -> Path:
    """Where the plist of an agent that starts at login lives (auto_start)."""
    return home / "Library" / "LaunchAgents" / f"com.mlx-serve.{port}.plist"


def manual_plist(home: Path, port: int) -> Path:
    """Where it lives without auto_start: launchd never loads it by itself."""
    return home / ".mlx-serve" / "launchd" / f"com.mlx-serve.{port}.plist"


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


def unit_environment(text: str) -> dict[str, str]:
    return dict(shlex.split(v)[0].split("=", 1) for v in unit_values(text)["Environment"])


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
    env = {"HF_HOME": str(home / "hf cache"), "HF_TOKEN": "hf_secret", "HF_ENDPOINT": "https://mirror.example"}
    out, calls = service(home, recorder, "install", "--port", "8123", "--platform", "linux", env=env)
    assert out.returncode == 0, out.stderr
    text = unit_file(home).read_text()
    values = unit_values(text)
    exe = shlex.split(values["ExecStart"][0])[0]
    assert Path(exe).is_absolute() and os.access(exe, os.X_OK)
    assert values["ExecStart"][0].endswith("start --foreground --port %i")
    environment = unit_environment(text)
    assert environment["MLX_SERVE_MANAGED_BY"] == "systemd" and "PATH" in environment
    # The allowlist: what a hub pull needs from the installing shell (the service's environment is bare).
    assert {k: environment[k] for k in env} == env
    assert (unit_file(home).stat().st_mode & 0o777) == 0o600  # it may hold HF_TOKEN
    assert values["Restart"] == ["on-failure"] and values["RestartSec"] == ["5"]
    # bad settings, port taken, a preload that failed: no restart loop
    assert values["RestartPreventExitStatus"] == ["78 69 3"]
    assert int(values["TimeoutStopSec"][0]) > 30  # beyond graceful_timeout
    assert values["WantedBy"] == ["default.target"]
    assert calls == [
        "systemctl --user daemon-reload",
        "systemctl --user disable mlx-serve@8123.service",  # auto_start is false by default
        "systemctl --user try-restart mlx-serve@8123.service",
    ]


def test_settings_changes_show_up_in_both_files(home: Path, recorder, macos) -> None:
    write_config(
        home, "graceful_timeout: 50\nservice:\n  auto_start: true\n  restart_on_failure: false\n  restart_delay: 9\n"
    )
    out, calls = service(home, recorder, "install", "--port", "8124", "--platform", "linux")
    assert out.returncode == 0
    values = unit_values(unit_file(home).read_text())
    assert values["Restart"] == ["no"] and values["RestartSec"] == ["9"] and values["TimeoutStopSec"] == ["65"]
    # auto_start: enabled, and started now (restart starts a stopped unit), as the plist is on macOS
    assert calls[1:] == [
        "systemctl --user enable mlx-serve@8124.service",
        "systemctl --user restart mlx-serve@8124.service",
    ]

    code, *_ = macos("install", "--port", "8124")
    assert code == 0
    plist = plistlib.loads(plist_file(home, 8124).read_bytes())
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is False
    assert plist["ThrottleInterval"] == 9 and plist["ExitTimeOut"] == 65


def test_plist_parses_and_carries_what_launchd_needs(home: Path, macos, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", "/Volumes/models/hf")
    code, _, err, calls = macos("install", "--port", "8125")
    assert code == 0, err
    path = manual_plist(home, 8125)  # auto_start false: outside LaunchAgents, so login never loads it
    assert not plist_file(home, 8125).exists()
    plist = plistlib.loads(path.read_bytes())
    assert plist["Label"] == "com.mlx-serve.8125"
    assert Path(plist["ProgramArguments"][0]).is_absolute()
    assert plist["ProgramArguments"][1:] == ["start", "--foreground", "--port", "8125"]
    assert plist["RunAtLoad"] is True  # loading it is starting it
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restart after a crash, not after a stop
    assert plist["ThrottleInterval"] == 5 and plist["ExitTimeOut"] > 30
    assert plist["LimitLoadToSessionType"] == ["Aqua", "Background", "LoginWindow", "StandardIO", "System"]
    assert plist["ProcessType"] == "Interactive"  # unspecified, launchd throttles its CPU and I/O
    assert plist["SoftResourceLimits"] == {"NumberOfFiles": 8192}  # agents start with 256 open files
    assert "/usr/sbin" in plist["EnvironmentVariables"]["PATH"].split(":")  # lsof lives there
    assert "MLX_SERVE_BLAS" not in plist["EnvironmentVariables"]  # a path of this Linux machine
    log = home / ".mlx-serve" / "logs" / "mlx-serve-8125.log"
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(log)
    assert log.parent.is_dir()  # launchd does not create it, and would fail to spawn the job
    assert plist["EnvironmentVariables"]["MLX_SERVE_MANAGED_BY"] == "launchd"
    assert plist["EnvironmentVariables"]["HF_HOME"] == "/Volumes/models/hf"
    assert (path.stat().st_mode & 0o777) == 0o600
    uid = os.getuid()
    # Enabled, never disabled: launchd refuses to bootstrap a disabled label. Not started without auto_start.
    assert calls == [  # every domain it may have been loaded in: over SSH (user/) and at the console (gui/)
        f"launchctl bootout gui/{uid}/com.mlx-serve.8125",
        f"launchctl bootout user/{uid}/com.mlx-serve.8125",
        f"launchctl enable gui/{uid}/com.mlx-serve.8125",
    ]


def test_install_with_auto_start_loads_from_launch_agents_and_starts(home: Path, macos) -> None:
    macos("install", "--port", "8125")
    write_config(home, "service:\n  auto_start: true\n")
    code, _, err, calls = macos("install", "--port", "8125")
    assert code == 0, err
    assert plist_file(home, 8125).exists() and not manual_plist(home, 8125).exists()
    target = f"gui/{os.getuid()}/com.mlx-serve.8125"
    assert calls == [
        f"launchctl bootout {target}",
        f"launchctl bootout user/{os.getuid()}/com.mlx-serve.8125",
        f"launchctl enable {target}",
        f"launchctl bootstrap gui/{os.getuid()} {plist_file(home, 8125)}",
        f"launchctl kickstart {target}",
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


def test_launchd_start_enables_bootstraps_and_kickstarts(home: Path, macos) -> None:
    macos("install", "--port", "8127")
    code, _, err, calls = macos("start", "--port", "8127")
    target = f"gui/{os.getuid()}/com.mlx-serve.8127"
    assert code == 0, err
    assert calls == [
        f"launchctl enable {target}",
        f"launchctl bootstrap gui/{os.getuid()} {manual_plist(home, 8127)}",
        f"launchctl kickstart {target}",
    ]


def test_launchd_start_that_cannot_start_fails(macos, recorder) -> None:
    """bootstrap may fail only because the job is loaded already; kickstart then tells the truth."""
    macos("install", "--port", "8127")
    script_codes(recorder, 0, 5, 113)  # enable, bootstrap (I/O error), kickstart (no such service)
    code, _, err, _ = macos("start", "--port", "8127")
    assert code == 1 and "kickstart" in err and "113" in err


def test_launchd_stop_waits_out_an_asynchronous_bootout(macos, recorder) -> None:
    target = f"gui/{os.getuid()}/com.mlx-serve.8127"
    script_codes(recorder, 36, 36, 0)  # "operation now in progress" twice, then done
    code, _, err, calls = macos("stop", "--port", "8127")
    assert code == 0, err
    assert calls == [f"launchctl bootout {target}"] * 3 + [f"launchctl bootout user/{os.getuid()}/com.mlx-serve.8127"]
    script_codes(recorder, 3)  # not loaded: stopped already
    assert macos("stop", "--port", "8127")[0] == 0
    script_codes(recorder, 5)  # a real failure is reported
    code, _, err, _ = macos("stop", "--port", "8127")
    assert code == 1 and "bootout" in err


@pytest.mark.parametrize(
    ("verb", "expected"),
    [("status", ["print gui/{uid}/com.mlx-serve.8127"])],
)
def test_launchd_status(home: Path, macos, verb: str, expected: list[str]) -> None:
    code, _, _, calls = macos(verb, "--port", "8127")
    assert calls == ["launchctl " + e.format(uid=os.getuid()) for e in expected]
    assert code == 3  # the server itself is not running


def test_launchd_enable_and_disable_move_the_plist_in_and_out_of_launch_agents(home: Path, macos) -> None:
    macos("install", "--port", "8127")
    code, _, _, calls = macos("enable", "--port", "8127")
    assert code == 0 and plist_file(home, 8127).exists() and not manual_plist(home, 8127).exists()
    assert calls == [f"launchctl enable gui/{os.getuid()}/com.mlx-serve.8127"]  # neither starts nor stops it
    code, _, _, _ = macos("disable", "--port", "8127")
    assert code == 0 and manual_plist(home, 8127).exists() and not plist_file(home, 8127).exists()


def test_over_ssh_without_the_console_the_user_domain_is_used(home: Path, macos, monkeypatch, tmp_path) -> None:
    """No GUI session (nobody, or another user, at the console): gui/UID does not exist, user/UID does."""
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.2 50000 10.0.0.1 22")
    monkeypatch.setattr(service_module, "CONSOLE", tmp_path / "no-console")
    _, _, _, calls = macos("start", "--port", "8127")
    assert calls[1] == f"launchctl bootstrap user/{os.getuid()} {manual_plist(home, 8127)}"
    mine = tmp_path / "console"
    mine.touch()  # owned by this user: a GUI login of ours is there
    monkeypatch.setattr(service_module, "CONSOLE", mine)
    assert macos("start", "--port", "8127")[3][1].startswith(f"launchctl bootstrap gui/{os.getuid()} ")


def test_the_fallback_executable_is_separate_arguments(home: Path, macos, monkeypatch, tmp_path) -> None:
    """No mlx-serve script anywhere: `python -m mlx_serve`, each word its own ProgramArguments entry."""
    python = tmp_path / "python3"
    python.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    macos("install", "--port", "8127")
    plist = plistlib.loads(manual_plist(home, 8127).read_bytes())
    assert plist["ProgramArguments"] == [str(python), "-m", "mlx_serve", "start", "--foreground", "--port", "8127"]


def test_install_under_a_folder_macos_guards_is_warned_about(tmp_path) -> None:
    user = tmp_path / "me"
    for folder in ("Documents", "Desktop", "Downloads", "Library/Mobile Documents"):
        assert service_module.guarded_folder(user / folder / "mlx-serve" / "src", user) == f"~/{folder}"
    assert service_module.guarded_folder(user / "code" / "mlx-serve", user) is None
    assert service_module.guarded_folder(user / "Documentation", user) is None
    assert service_module.guarded_folder(Path("/Volumes/ssd/models"), user) == "/Volumes"


def test_every_path_the_service_reads_is_checked_for_privacy_folders(home: Path, macos, monkeypatch) -> None:
    """Not only the install: the models folder, the Hugging Face cache and the key file must be readable
    by a launchd job too, or the agent fails at its first pull, load or request."""
    monkeypatch.setenv("HF_HOME", "/Volumes/models/hf")
    monkeypatch.setenv("MLX_SERVE_MODELS_DIR", str(home / "Documents" / "models"))
    code, out, err, _ = macos("install", "--port", "8125")
    text = out + err
    assert code == 0 and "HF_HOME is under /Volumes" in text and "models_dir is under ~/Documents" in text


def test_reinstall_rewrites_and_uninstall_removes(home: Path, recorder, macos) -> None:
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

    macos("install", "--port", "8128")
    macos("enable", "--port", "8128")
    code, _, _, calls = macos("uninstall", "--port", "8128")
    assert code == 0 and not plist_file(home, 8128).exists() and not manual_plist(home, 8128).exists()
    uid = os.getuid()
    assert calls == [
        f"launchctl bootout gui/{uid}/com.mlx-serve.8128",
        f"launchctl bootout user/{uid}/com.mlx-serve.8128",
    ]


def test_uninstall_keeps_the_template_other_ports_use(home: Path, recorder) -> None:
    for port in ("8130", "8131"):
        service(home, recorder, "install", "--port", port, "--platform", "linux")
    # What `systemctl --user enable mlx-serve@8131.service` leaves behind.
    wants = unit_file(home).parent / "default.target.wants"
    wants.mkdir()
    (wants / "mlx-serve@8131.service").symlink_to(unit_file(home))
    out, _ = service(home, recorder, "uninstall", "--port", "8130", "--platform", "linux")
    assert out.returncode == 0 and unit_file(home).exists()
    assert "mlx-serve@8131.service" in out.stderr
    (wants / "mlx-serve@8131.service").unlink()
    dry, _ = service(home, recorder, "uninstall", "--port", "8131", "--platform", "linux", "--dry-run")
    assert f"# would remove {unit_file(home)}" in dry.stdout
    out, _ = service(home, recorder, "uninstall", "--port", "8131", "--platform", "linux")
    assert not unit_file(home).exists()


def test_dry_run_prints_and_touches_nothing(home: Path, recorder) -> None:
    for name in ("linux", "macos"):
        out, calls = service(home, recorder, "install", "--port", "8129", "--platform", name, "--dry-run")
        assert out.returncode == 0 and calls == []
        assert "--foreground" in out.stdout and "# would run:" in out.stdout
    assert not unit_file(home).exists() and not plist_file(home, 8129).exists()
    assert not manual_plist(home, 8129).exists()


def test_another_systems_files_are_only_printed(home: Path, recorder) -> None:
    out, calls = service(home, recorder, "install", "--port", "8129", "--platform", "macos")
    assert out.returncode == 2 and "--dry-run" in out.stderr and calls == []
    assert not (home / "Library").exists() and not manual_plist(home, 8129).exists()


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
    out = run_cli(home, "stop", "--force", "--port", str(server.port), env=path)
    assert out.returncode == 0, out.stderr
    assert calls.read_text().splitlines()[1:] == [
        f"systemctl --user kill --signal=SIGKILL mlx-serve@{server.port}.service",  # --force is the manager's
        f"systemctl --user stop mlx-serve@{server.port}.service",
    ]
    assert server.stop() == 0


def test_a_log_past_its_cap_is_rotated_at_start(home: Path) -> None:
    """A crash-looping service restarts into the same log: each start moves a log past log_max_bytes aside."""
    port = free_port()
    log = home / ".mlx-serve" / "logs" / f"mlx-serve-{port}.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"old line\n" * 300_000)  # 2.7 MB
    out = run_cli(home, "start", "--port", str(port), env={"MLX_SERVE_LOG_MAX_BYTES": "1MiB"})
    assert out.returncode == 0, out.stderr
    try:
        assert (log.parent / f"mlx-serve-{port}.log.1").stat().st_size == 2_700_000
        assert log.stat().st_size < 100_000 and b"old line" not in log.read_bytes()
        assert b"log_rotated" in log.read_bytes()
    finally:
        run_cli(home, "stop", "--port", str(port))


def test_under_sudo_the_launchd_agent_is_refused(home: Path, macos, monkeypatch) -> None:
    """sudo would make the domain root's (gui/0): the user's agent would never be found or run as root."""
    monkeypatch.setenv("SUDO_USER", "someone")
    code, _, err, calls = macos("install", "--port", "8125")
    assert code == 2 and "not with sudo" in err and calls == []


def test_under_launchd_a_start_that_would_fail_again_exits_0(home: Path, monkeypatch, capsys) -> None:
    """KeepAlive {SuccessfulExit: false} restarts every non-zero exit; bad settings (78), a taken port (69)
    and a failed preload (3) would only fail again, so under launchd they exit 0 with a line saying why."""
    from mlx_serve.cli import for_the_manager

    bad = run_cli(home, "start", "--foreground", env={"MLX_SERVE_MANAGED_BY": "launchd", "MLX_SERVE_PORT": "x"})
    assert bad.returncode == 0 and "exit 78" in bad.stderr and "MLX_SERVE_PORT" in bad.stderr
    assert run_cli(home, "start", "--foreground", env={"MLX_SERVE_PORT": "x"}).returncode == 78  # by hand: 78
    monkeypatch.setenv("MLX_SERVE_MANAGED_BY", "launchd")
    for code in (78, 69, 3):
        assert for_the_manager("start", code) == 0
        assert f"exit {code}" in capsys.readouterr().err
    assert for_the_manager("start", 1) == 1  # a crash is restarted
    monkeypatch.setenv("MLX_SERVE_MANAGED_BY", "systemd")  # told by RestartPreventExitStatus instead
    assert for_the_manager("start", 78) == 78


def test_install_without_a_user_manager_leaves_nothing_and_says_why(home: Path, recorder) -> None:
    """`systemctl --user` in a session without the user's systemd manager (su, sudo -u) fails with
    "Failed to connect to bus": the install says what to do and leaves no unit file behind; a unit file
    already there is put back as it was."""
    script_codes(recorder, 1)  # daemon-reload fails, as systemctl does without a user bus
    out, calls = service(home, recorder, "install", "--port", "8140", "--platform", "linux")
    assert out.returncode == 1 and calls == ["systemctl --user daemon-reload"]
    assert "loginctl enable-linger" in out.stderr and "Failed to connect to bus" in out.stderr
    assert not unit_file(home).exists()
    assert service(home, recorder, "install", "--port", "8140", "--platform", "linux")[0].returncode == 0
    installed = unit_file(home).read_text()
    write_config(home, "graceful_timeout: 77\n")
    script_codes(recorder, 0, 1)  # a later install's enable fails
    out, _ = service(home, recorder, "install", "--port", "8140", "--platform", "linux")
    assert out.returncode == 1 and unit_file(home).read_text() == installed
