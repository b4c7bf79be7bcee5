"""Running mlx-serve as a service: systemd user units on Linux, launchd agents on macOS.

The unit and the plist are rendered from the templates in `deploy/` and the settings tree (restart
policy, restart delay, start at login, a stop timeout above `graceful_timeout`), never hand-edited:
re-running `install` after a settings change rewrites the file and reloads it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Literal, TextIO
from xml.sax.saxutils import escape

from mlx_serve import blas, lifecycle
from mlx_serve.settings import Settings

Platform = Literal["linux", "macos"]
Verb = Literal["install", "uninstall", "start", "stop", "status", "enable", "disable"]
TEMPLATES = Path(__file__).with_name("templates")
# Seconds beyond graceful_timeout before the manager sends SIGKILL: the server's own drain comes first.
STOP_MARGIN = 15


class UnsupportedPlatform(Exception):
    pass


def detect_platform() -> Platform:
    system = platform.system()
    if system == "Linux":
        return "linux"
    if system == "Darwin":
        return "macos"
    raise UnsupportedPlatform(f"running mlx-serve as a service is not supported on {system or 'this system'}")


def executable() -> str:
    """The absolute path of the installed `mlx-serve` (the one beside this Python, as in a venv)."""
    beside = Path(sys.executable).with_name("mlx-serve")
    if beside.exists():
        return str(beside)
    found = shutil.which("mlx-serve")
    return str(Path(found).resolve()) if found else f"{sys.executable} -m mlx_serve"


def service_path() -> str:
    """PATH for the service: the install's bin directory first, then the system's."""
    return os.pathsep.join(dict.fromkeys([str(Path(executable()).parent), "/usr/local/bin", "/usr/bin", "/bin"]))


@dataclass(frozen=True)
class Command:
    argv: list[str]
    may_fail: bool = False  # e.g. unloading what is not loaded yet

    def __str__(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class Plan:
    """What a verb does: a file to write or remove, then commands."""

    commands: list[Command]
    write: tuple[Path, str] | None = None
    remove: Path | None = None


class Manager:
    name: str

    def __init__(self, settings: Settings, port: int, user_home: Path, home: Path) -> None:
        self.settings = settings
        self.port = port
        self.user_home = user_home
        self.home = home

    @property
    def stop_timeout(self) -> int:
        return self.settings.graceful_timeout + STOP_MARGIN

    def path(self) -> Path:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError

    def plan(self, verb: Verb) -> Plan:
        raise NotImplementedError


class Systemd(Manager):
    name = "systemd"

    @property
    def unit(self) -> str:
        return f"mlx-serve@{self.port}.service"

    def path(self) -> Path:
        config = os.environ.get("XDG_CONFIG_HOME") or str(self.user_home / ".config")
        return Path(config) / "systemd" / "user" / "mlx-serve@.service"

    def render(self) -> str:
        env = []
        if blas.STATUS.path:  # the library this install found: the service gets the same fast path
            env.append(f"Environment={blas.ENV_VAR}={blas.STATUS.path}")
        s = self.settings
        return Template((TEMPLATES / "mlx-serve@.service").read_text()).substitute(
            executable=executable(),
            path=service_path(),
            environment="\n".join(env),
            restart="on-failure" if s.service.restart_on_failure else "no",
            restart_delay=s.service.restart_delay,
            stop_timeout=self.stop_timeout,
        )

    def _ctl(self, *args: str, may_fail: bool = False) -> Command:
        return Command(["systemctl", "--user", *args], may_fail)

    def plan(self, verb: Verb) -> Plan:
        unit = self.unit
        if verb == "install":
            commands = [self._ctl("daemon-reload")]
            commands.append(self._ctl("enable" if self.settings.service.auto_start else "disable", unit))
            commands.append(self._ctl("try-restart", unit))  # a running service picks up new settings
            return Plan(commands, write=(self.path(), self.render()))
        if verb == "uninstall":
            return Plan(
                [
                    self._ctl("stop", unit, may_fail=True),
                    self._ctl("disable", unit, may_fail=True),
                    self._ctl("daemon-reload"),
                ],
                remove=self.path(),
            )
        if verb == "status":
            return Plan([self._ctl("status", "--no-pager", unit, may_fail=True)])
        return Plan([self._ctl(verb, unit)])


class Launchd(Manager):
    name = "launchd"

    @property
    def label(self) -> str:
        return f"com.mlx-serve.{self.port}"

    @property
    def domain(self) -> str:
        return f"gui/{os.getuid()}"

    def path(self) -> Path:
        return self.user_home / "Library" / "LaunchAgents" / f"{self.label}.plist"

    def render(self) -> str:
        s = self.settings
        # Restart after a crash only: a clean exit (mlx-serve stop, SIGTERM) stays stopped.
        keep_alive = (
            "<dict>\n    <key>SuccessfulExit</key>\n    <false/>\n  </dict>"
            if s.service.restart_on_failure
            else "<false/>"
        )
        values = {
            "label": self.label,
            "executable": executable(),
            "port": str(self.port),
            "path": service_path(),
            "run_at_load": "true" if s.service.auto_start else "false",
            "keep_alive": keep_alive,
            "restart_delay": str(s.service.restart_delay),
            "stop_timeout": str(self.stop_timeout),
            "log": str(lifecycle.log_file(self.home, self.port)),
        }
        safe = {k: v if k == "keep_alive" else escape(v) for k, v in values.items()}
        return Template((TEMPLATES / "com.mlx-serve.plist").read_text()).substitute(safe)

    def _ctl(self, *args: str, may_fail: bool = False) -> Command:
        return Command(["launchctl", *args], may_fail)

    def plan(self, verb: Verb) -> Plan:
        target = f"{self.domain}/{self.label}"
        bootstrap = self._ctl("bootstrap", self.domain, str(self.path()), may_fail=True)
        if verb == "install":
            enable = self._ctl("enable" if self.settings.service.auto_start else "disable", target)
            # Unload the old definition first, so the new file is what launchd runs.
            return Plan(
                [self._ctl("bootout", target, may_fail=True), enable, bootstrap], write=(self.path(), self.render())
            )
        if verb == "uninstall":
            return Plan(
                [self._ctl("bootout", target, may_fail=True), self._ctl("disable", target, may_fail=True)],
                remove=self.path(),
            )
        if verb == "start":
            return Plan([bootstrap, self._ctl("kickstart", target)])
        if verb == "stop":
            return Plan([self._ctl("bootout", target)])
        if verb == "status":
            return Plan([self._ctl("print", target, may_fail=True)])
        return Plan([self._ctl(verb, target)])  # enable, disable


def manager_for(platform_name: Platform, settings: Settings, port: int, user_home: Path, home: Path) -> Manager:
    cls = Systemd if platform_name == "linux" else Launchd
    return cls(settings, port, user_home, home)


def carry_out(plan: Plan, dry_run: bool, out: TextIO = sys.stdout) -> int:
    """Write/remove the file, then run the commands; with dry_run, print all of it instead."""
    if plan.write:
        path, text = plan.write
        if dry_run:
            print(f"# would write {path}:\n{text}", file=out)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            print(f"wrote {path}", file=out)
    if plan.remove and plan.remove.exists():
        if dry_run:
            print(f"# would remove {plan.remove}", file=out)
        else:
            plan.remove.unlink()
            print(f"removed {plan.remove}", file=out)
    for command in plan.commands:
        if dry_run:
            print(f"# would run: {command}", file=out)
            continue
        try:
            done = subprocess.run(command.argv, check=False)
        except FileNotFoundError:
            print(f"mlx-serve: {command.argv[0]} is not installed", file=sys.stderr)
            return 1
        if done.returncode != 0 and not command.may_fail:
            print(f"mlx-serve: `{command}` failed with exit code {done.returncode}", file=sys.stderr)
            return 1
    return 0


def stop_managed(manager: str, settings: Settings, port: int, user_home: Path, home: Path) -> int:
    """Stop a server its manager runs: a SIGTERM from us would count as a crash and be restarted."""
    platform_name: Platform = "linux" if manager == "systemd" else "macos"
    plan = manager_for(platform_name, settings, port, user_home, home).plan("stop")
    print(f"port {port}: run by {manager}; stopping it through {manager}")
    return carry_out(plan, dry_run=False)
