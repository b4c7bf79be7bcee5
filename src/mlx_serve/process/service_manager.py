"""Running mlx-serve as a service: systemd user units on Linux, launchd agents on macOS.

The unit (from `templates/`) and the plist (built with plistlib) are rendered from the settings tree (restart
policy, restart delay, start at login, a stop timeout above `graceful_timeout`), never hand-edited:
re-running `install` after a settings change rewrites the file and reloads it.
"""

from __future__ import annotations

import os
import platform
import plistlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Literal, TextIO

from mlx_serve.cpu import blas
from mlx_serve.process import lifecycle
from mlx_serve.settings import Settings

Platform = Literal["linux", "macos"]
Verb = Literal["install", "uninstall", "start", "stop", "status", "enable", "disable"]
TEMPLATES = Path(__file__).parent.parent / "templates"
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


def executable_argv() -> list[str]:
    """How to run the installed `mlx-serve`: the script beside this Python (as in a venv), else the one on
    PATH, else this Python with `-m mlx_serve`. Always a list: launchd takes each argument apart."""
    beside = Path(sys.executable).with_name("mlx-serve")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mlx-serve")
    return [str(Path(found).resolve())] if found else [sys.executable, "-m", "mlx_serve"]


def service_path() -> str:
    """PATH for the service: the install's bin directory first, then the system's."""
    first = str(Path(executable_argv()[0]).parent)
    # /usr/sbin and /sbin too: lsof (who holds a port) lives there on macOS.
    system = ["/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
    return os.pathsep.join(dict.fromkeys([first, *system]))


# Variables copied from the installing shell into the unit and the plist: a service manager starts the
# server with a bare environment, so without them a hub pull would lose the user's cache, mirror or token.
COPIED_PREFIXES = ("HF_", "MLX_SERVE_")
COPIED_NAMES = ("HUGGING_FACE_HUB_TOKEN",)


def service_environment(manager: str) -> dict[str, str]:
    env = {"PATH": service_path()}
    for key, value in sorted(os.environ.items()):
        if (key.startswith(COPIED_PREFIXES) or key in COPIED_NAMES) and key != lifecycle.MANAGER_ENV:
            env[key] = value
    # The BLAS library this install found, so the service gets the same fast path; only in a unit for this
    # machine: a plist rendered here for a Mac must carry no path of this one.
    if blas.STATUS.path and manager == "systemd" and sys.platform.startswith("linux"):
        env[blas.ENV_VAR] = blas.STATUS.path
    env[lifecycle.MANAGER_ENV] = manager
    return env


# Folders macOS's privacy controls (TCC) guard: a program launchd starts does not inherit Terminal's
# access to them, so Python cannot even import the package from there (EPERM) and the agent crash-loops.
GUARDED_FOLDERS = ("Desktop", "Documents", "Downloads", "Library/Mobile Documents")


def guarded_folder(location: Path, user_home: Path) -> str | None:
    """The guarded folder `location` lies in, if any (`/Volumes`: an external or network volume, which
    launchd jobs need Full Disk Access to read too)."""
    for folder in GUARDED_FOLDERS:
        if location.is_relative_to(user_home / folder):
            return f"~/{folder}"
    if location.is_relative_to("/Volumes"):
        return "/Volumes"
    return None


def guarded_paths(settings: Any, user_home: Path) -> list[str]:
    """Warnings for each path the service needs that macOS's privacy controls keep from launchd's jobs:
    the install, the models folder, the Hugging Face cache, the API key file."""
    hf_home = os.environ.get("HF_HOME")
    paths = {
        "mlx-serve is installed": install_location(),
        "models_dir is": Path(settings.models_dir).expanduser(),
        "HF_HOME is": Path(hf_home).expanduser() if hf_home else None,
        "api_key_file is": settings.api_key_file,
    }
    warnings = []
    for what, path in paths.items():
        folder = guarded_folder(Path(path), user_home) if path is not None else None
        if folder is not None:
            warnings.append(
                f"{what} under {folder}, which macOS's privacy controls keep from programs launchd starts: the "
                "service would fail to read it and restart over and over. Move it elsewhere (e.g. under ~/mlx-serve), "
                "or give the Python that runs mlx-serve Full Disk Access, and install the service again."
            )
    return warnings


def install_location() -> Path:
    """Where this install's code lives (a clone's src/, or site-packages)."""
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Command:
    argv: list[str]
    may_fail: bool = False  # e.g. unloading what is not loaded yet
    ok_codes: frozenset[int] = frozenset()  # exit codes that mean success too ("not loaded" for a stop)
    retry_codes: frozenset[int] = frozenset()  # run again while it exits with one of these
    attempts: int = 1

    def __str__(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class Plan:
    """What a verb does: folders to make, a file to write or remove, then commands."""

    commands: list[Command]
    write: tuple[Path, str] | None = None
    remove: tuple[Path, ...] = ()
    make_dirs: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()
    hint: str | None = None  # printed when a command fails: the usual cause, and what to do


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

    def plan(self, verb: Verb, force: bool = False) -> Plan:
        raise NotImplementedError


def _systemd_quote(value: str) -> str:
    """One word of a unit file: quoted, with `%` (systemd's specifiers) doubled."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


class Systemd(Manager):
    name = "systemd"

    @property
    def unit(self) -> str:
        return f"mlx-serve@{self.port}.service"

    def path(self) -> Path:
        config = os.environ.get("XDG_CONFIG_HOME") or str(self.user_home / ".config")
        return Path(config) / "systemd" / "user" / "mlx-serve@.service"

    def render(self) -> str:
        s = self.settings
        env = service_environment(self.name)
        return Template((TEMPLATES / "mlx-serve@.service").read_text()).substitute(
            executable=" ".join(_systemd_quote(a) for a in executable_argv()),
            environment="\n".join(f"Environment={_systemd_quote(f'{k}={v}')}" for k, v in env.items()),
            restart="on-failure" if s.service.restart_on_failure else "no",
            restart_delay=s.service.restart_delay,
            stop_timeout=self.stop_timeout,
            no_restart=" ".join(str(code) for code in lifecycle.NO_RESTART_EXIT_CODES),
        )

    def _ctl(self, *args: str, may_fail: bool = False) -> Command:
        return Command(["systemctl", "--user", *args], may_fail)

    def instances(self) -> list[Path]:
        """Other ports' instances enabled from the shared template (their `.wants` links)."""
        wants = self.path().parent / "default.target.wants"
        return [p for p in wants.glob("mlx-serve@*.service") if p.name != self.unit] if wants.is_dir() else []

    def plan(self, verb: Verb, force: bool = False) -> Plan:
        unit = self.unit
        if verb == "install":
            commands = [self._ctl("daemon-reload")]
            commands.append(self._ctl("enable" if self.settings.service.auto_start else "disable", unit))
            # With auto_start it runs from now on, as on macOS (restart: starts it, or picks up new settings);
            # without, a running one picks up the new settings and a stopped one stays stopped.
            commands.append(self._ctl("restart" if self.settings.service.auto_start else "try-restart", unit))
            return Plan(commands, write=(self.path(), self.render()), hint=NO_USER_MANAGER)
        if verb == "uninstall":
            # The template serves every port: it goes only with the last instance that uses it.
            others = self.instances()
            warnings = (f"kept {self.path()}: other ports' services use it ({', '.join(p.name for p in others)})",)
            return Plan(
                [
                    self._ctl("stop", unit, may_fail=True),
                    self._ctl("disable", unit, may_fail=True),
                    self._ctl("daemon-reload"),
                ],
                remove=() if others else (self.path(),),
                warnings=warnings if others else (),
            )
        if verb == "status":
            return Plan([self._ctl("status", "--no-pager", unit, may_fail=True)])
        if verb == "stop" and force:
            return Plan([self._ctl("kill", "--signal=SIGKILL", unit, may_fail=True), self._ctl("stop", unit)])
        return Plan([self._ctl(verb, unit)])


NO_USER_MANAGER = (
    'systemctl --user needs your login\'s systemd user manager: "Failed to connect to bus" means this '
    "session has none (su, sudo -u, a container). Run it from a login session (ssh or the console) of this "
    "user, or `loginctl enable-linger $USER` and log in again"
)

# launchctl exit codes: 36 (EINPROGRESS) while a bootout is still draining the job; 3 (ESRCH) and 113
# ("Could not find service") when it is not loaded.
IN_PROGRESS = frozenset({36})
NOT_LOADED = frozenset({3, 113})
# A plist loads in the GUI session (gui/UID) and over SSH (user/UID), as Homebrew's do.
SESSION_TYPES = ["Aqua", "Background", "LoginWindow", "StandardIO", "System"]
CONSOLE = Path("/dev/console")


def launchd_domain(uid: int | None = None) -> str:
    """gui/UID, the login session's domain; user/UID over SSH when someone else (or nobody) owns the console,
    where the gui domain does not exist and every launchctl verb would fail (Homebrew's rule)."""
    uid = os.getuid() if uid is None else uid
    if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY"):
        try:
            owner = CONSOLE.stat().st_uid
        except OSError:
            owner = None
        if owner != uid:
            return f"user/{uid}"
    return f"gui/{uid}"


class Launchd(Manager):
    """A launchd agent, as Homebrew's `brew services` drives them.

    In launchd, "disabled" means "may not load at all", not "do not start at login": whether an agent
    starts at login is whether its plist is in ~/Library/LaunchAgents. So the plist lives there with
    `auto_start`, and in ~/.mlx-serve/launchd/ without it, where launchd never looks by itself; `start`
    bootstraps it from wherever it is. Both enable the label before they bootstrap it."""

    name = "launchd"

    @property
    def label(self) -> str:
        return f"com.mlx-serve.{self.port}"

    @property
    def domain(self) -> str:
        return launchd_domain()

    @property
    def target(self) -> str:
        return f"{self.domain}/{self.label}"

    def login_path(self) -> Path:
        return self.user_home / "Library" / "LaunchAgents" / f"{self.label}.plist"

    def manual_path(self) -> Path:
        return self.home / "launchd" / f"{self.label}.plist"

    def path(self) -> Path:
        return self.login_path() if self.settings.service.auto_start else self.manual_path()

    def installed_path(self) -> Path:
        """The plist as installed (enable/disable move it), else where install would put it."""
        for path in (self.login_path(), self.manual_path()):
            if path.exists():
                return path
        return self.path()

    def log(self) -> Path:
        return lifecycle.log_file(self.home, self.port)

    def render(self) -> str:
        s = self.settings
        plist: dict[str, object] = {
            "Label": self.label,
            "ProgramArguments": [*executable_argv(), "start", "--foreground", "--port", str(self.port)],
            "EnvironmentVariables": service_environment(self.name),
            # Loading is starting: at login from LaunchAgents, or by `service start`.
            "RunAtLoad": True,
            # Restart after a crash only: a clean exit (mlx-serve stop, SIGTERM) stays stopped.
            "KeepAlive": {"SuccessfulExit": False} if s.service.restart_on_failure else False,
            "ThrottleInterval": s.service.restart_delay,
            # Unspecified, a job gets "light resource limits", its CPU and I/O throttled (launchd.plist(5)).
            "ProcessType": "Interactive",
            # Agents start with 256 open files; each connection takes one (the server raises its own soft
            # limit too, on every platform: process/server.py).
            "SoftResourceLimits": {"NumberOfFiles": lifecycle.OPEN_FILES},
            "ExitTimeOut": self.stop_timeout,
            "LimitLoadToSessionType": SESSION_TYPES,
            "StandardOutPath": str(self.log()),
            "StandardErrorPath": str(self.log()),
        }
        header = "<!-- mlx-serve as a launchd agent. Written by `mlx-serve service install`; re-run it instead. -->\n"
        text = plistlib.dumps(plist, sort_keys=False).decode()
        first, rest = text.split("\n", 1)
        return f"{first}\n{header}{rest}"

    def _ctl(self, *args: str, **kwargs: object) -> Command:
        return Command(["launchctl", *args], **kwargs)  # type: ignore[arg-type]

    def _bootouts(self) -> list[Command]:
        """Bootout in every domain the agent may have been loaded in, this session's first: one set up over
        SSH (user/UID) and later used at the console (gui/UID) may be loaded in both, as Homebrew's stop
        knows. Asynchronous: 36 while the job drains, retried until launchd says it is gone."""
        uid = os.getuid()
        domains = dict.fromkeys([self.domain, f"gui/{uid}", f"user/{uid}"])
        return [
            self._ctl(
                "bootout",
                f"{domain}/{self.label}",
                ok_codes=NOT_LOADED,
                retry_codes=IN_PROGRESS,
                attempts=self.stop_timeout * 2,
            )
            for domain in domains
        ]

    def _bootstrap(self, path: Path) -> list[Command]:
        # Enable first: launchd refuses to bootstrap a disabled label (5 or 119), whatever made it so.
        # A label already loaded fails to bootstrap too; kickstart then starts it, or reports what is wrong.
        return [
            self._ctl("enable", self.target),
            self._ctl("bootstrap", self.domain, str(path), may_fail=True),
            self._ctl("kickstart", self.target),
        ]

    def plan(self, verb: Verb, force: bool = False) -> Plan:
        if verb == "install":
            path, other = self.path(), ({self.login_path(), self.manual_path()} - {self.path()}).pop()
            warnings = tuple(guarded_paths(self.settings, self.user_home))
            commands = [*self._bootouts()]  # the old definition goes first: the new file is what launchd runs
            commands += (
                self._bootstrap(path) if self.settings.service.auto_start else [self._ctl("enable", self.target)]
            )
            return Plan(
                commands,
                write=(path, self.render()),
                remove=(other,),
                make_dirs=(self.log().parent,),  # launchd does not create it, and fails to spawn without it
                warnings=warnings,
            )
        if verb == "uninstall":
            return Plan(self._bootouts(), remove=(self.login_path(), self.manual_path()))
        if verb == "start":
            return Plan(self._bootstrap(self.installed_path()), make_dirs=(self.log().parent,))
        if verb == "stop":
            kill = [self._ctl("kill", "SIGKILL", self.target, may_fail=True)] if force else []
            return Plan([*kill, *self._bootouts()])
        if verb == "status":
            return Plan([self._ctl("print", self.target, may_fail=True)])
        # enable / disable: start at login or not, by where the plist lives. Neither starts nor stops it.
        here, there = (
            (self.manual_path(), self.login_path()) if verb == "enable" else (self.login_path(), self.manual_path())
        )
        source = here if here.exists() else there
        text = source.read_text() if source.exists() else self.render()
        return Plan([self._ctl("enable", self.target)], write=(there, text), remove=(here,))


def manager_for(platform_name: Platform, settings: Settings, port: int, user_home: Path, home: Path) -> Manager:
    cls = Systemd if platform_name == "linux" else Launchd
    return cls(settings, port, user_home, home)


def carry_out(plan: Plan, dry_run: bool, out: TextIO = sys.stdout) -> int:
    """Make folders, write/remove files, then run the commands; with dry_run, print all of it instead."""
    for warning in plan.warnings:
        print(f"mlx-serve: warning: {warning}", file=sys.stderr)
    for folder in plan.make_dirs:
        if dry_run:
            print(f"# would create {folder}", file=out)
        else:
            lifecycle.private_dir(folder)
    before: tuple[Path, str | None] | None = None  # the file written, and what it held: undone on a failure
    if plan.write:
        path, text = plan.write
        if dry_run:
            print(f"# would write {path}:\n{text}", file=out)
        else:
            before = (path, path.read_text() if path.exists() else None)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            # Owner only: it may carry HF_TOKEN. (launchd also refuses a plist that others can write.)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, path)
            print(f"wrote {path}", file=out)
    for path in plan.remove:
        if path.exists():
            if dry_run:
                print(f"# would remove {path}", file=out)
            else:
                path.unlink()
                print(f"removed {path}", file=out)
    for command in plan.commands:
        if dry_run:
            print(f"# would run: {command}", file=out)
            continue
        code = run(command)
        if code is None:
            print(f"mlx-serve: {command.argv[0]} is not installed", file=sys.stderr)
            _undo(before, out)
            return 1
        if code != 0 and code not in command.ok_codes and not command.may_fail:
            print(f"mlx-serve: `{command}` failed with exit code {code}", file=sys.stderr)
            if plan.hint:
                print(f"mlx-serve: {plan.hint}", file=sys.stderr)
            _undo(before, out)
            return 1
    return 0


def _undo(before: tuple[Path, str | None] | None, out: TextIO) -> None:
    """A failed install leaves no file behind: the one it wrote goes back to what it was (or goes)."""
    if before is None:
        return
    path, text = before
    if text is None:
        path.unlink(missing_ok=True)
        print(f"removed {path}: nothing was installed", file=out)
    else:
        path.write_text(text)
        print(f"restored {path}", file=out)


RETRY_SECONDS = 0.5


def run(command: Command) -> int | None:
    """Run it (again while it exits with a retry code, up to its attempts); its exit code, None if missing."""
    for attempt in range(command.attempts):
        try:
            code = subprocess.run(command.argv, check=False).returncode
        except FileNotFoundError:
            return None
        if code not in command.retry_codes or attempt == command.attempts - 1:
            return code
        time.sleep(RETRY_SECONDS)
    return code


def stop_managed(manager: str, settings: Settings, port: int, user_home: Path, home: Path, force: bool = False) -> int:
    """Stop a server its manager runs: a SIGTERM from us would count as a crash and be restarted. With
    `force`, the manager kills it first."""
    platform_name: Platform = "linux" if manager == "systemd" else "macos"
    plan = manager_for(platform_name, settings, port, user_home, home).plan("stop", force=force)
    print(f"port {port}: run by {manager}; stopping it through {manager}")
    return carry_out(plan, dry_run=False)
