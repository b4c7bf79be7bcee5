"""Server instances on this machine: PID files per port, process identity, stale detection, starting in
the background, stopping.

The server writes `~/.mlx-serve/mlx-serve-<port>.pid` itself once it listens (so foreground, background
and service runs all have one) and removes it when it exits. The file records the PID and the process's
start time: a PID whose process is gone, or now belongs to another process (PID reuse), is stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

State = Literal["running", "stale", "stopped"]
# The service templates set this, so that `stop` goes through the manager that would otherwise restart us.
MANAGER_ENV = "MLX_SERVE_MANAGED_BY"
# `start`'s exit codes for failures a restart cannot cure (sysexits.h): the systemd unit lists them in
# RestartPreventExitStatus, so bad settings or a port already served never become a crash loop.
# The open files the server asks for at start (its soft limit, up to the hard one): one per connection.
OPEN_FILES = 8192
EXIT_SETTINGS = 78  # EX_CONFIG
EXIT_PORT_TAKEN = 69  # EX_UNAVAILABLE: this port already has a server (ours or another program)
EXIT_BOOT_FAILED = 3  # gunicorn's: the worker failed to boot (a preload that failed)
# Restarting would fail the same way, reloading every model each time.
NO_RESTART_EXIT_CODES = (EXIT_SETTINGS, EXIT_PORT_TAKEN, EXIT_BOOT_FAILED)


@dataclass(frozen=True)
class PidRecord:
    pid: int
    port: int
    host: str
    started: float  # the process's create_time, to tell it from a later process with the same PID
    manager: str | None = None  # "systemd" or "launchd" when a service manager runs it


@dataclass(frozen=True)
class Instance:
    port: int
    state: State
    record: PidRecord | None
    reason: str = ""

    @property
    def url(self) -> str:
        return url_for(self.record.host if self.record else "127.0.0.1", self.port)


def url_for(host: str, port: int) -> str:
    """Where to reach a server bound to `host`: a wildcard bind is reached on loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def pid_file(home: Path, port: int) -> Path:
    return home / f"mlx-serve-{port}.pid"


def log_file(home: Path, port: int) -> Path:
    return home / "logs" / f"mlx-serve-{port}.log"


def private_dir(path: Path) -> Path:
    """Create the directory readable by this user only (PID files and logs say what runs and where)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_pid_file(home: Path, port: int, host: str) -> PidRecord:
    me = psutil.Process()
    record = PidRecord(me.pid, port, host, me.create_time(), os.environ.get(MANAGER_ENV) or None)
    private_dir(home)
    fd, tmp = tempfile.mkstemp(dir=home, prefix=f".mlx-serve-{port}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(record), fh)
    os.replace(tmp, pid_file(home, port))  # atomic: a reader never sees half a file
    return record


def remove_pid_file(home: Path, port: int, pid: int | None = None) -> None:
    """Remove the port's PID file; with `pid`, only if the file still names that process."""
    path = pid_file(home, port)
    if pid is not None:
        record = read_pid_file(path)
        if record is not None and record.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_pid_file(path: Path) -> PidRecord | None:
    try:
        data = json.loads(path.read_text())
        return PidRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def is_server_process(record: PidRecord) -> tuple[bool, str]:
    """Is the PID in the record still the mlx-serve that wrote it? Checks start time and command line."""
    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False, f"process {record.pid} has exited"
        if abs(proc.create_time() - record.started) > 1.0:
            return False, f"PID {record.pid} now belongs to another process ({proc.name()})"
        cmdline = " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return False, f"process {record.pid} is gone"
    except psutil.AccessDenied:
        return False, f"PID {record.pid} belongs to another user's process"
    if "mlx_serve" not in cmdline and "mlx-serve" not in cmdline:
        return False, f"PID {record.pid} is not mlx-serve ({cmdline[:60]})"
    return True, ""


def inspect(home: Path, port: int) -> Instance:
    path = pid_file(home, port)
    if not path.exists():
        return Instance(port, "stopped", None)
    record = read_pid_file(path)
    if record is None:
        return Instance(port, "stale", None, "the PID file is unreadable")
    alive, reason = is_server_process(record)
    return Instance(port, "running" if alive else "stale", record, reason)


def known_ports(home: Path) -> list[int]:
    ports = []
    for path in home.glob("mlx-serve-*.pid"):
        with contextlib.suppress(ValueError):
            ports.append(int(path.stem.removeprefix("mlx-serve-")))
    return sorted(ports)


def port_in_use(host: str, port: int) -> str | None:
    """None if we could serve host:port now; else who holds it, as well as we can tell.

    The wildcard address is tried as well: on macOS, binding 127.0.0.1:P with SO_REUSEADDR (as gunicorn
    does) succeeds while another program listens on 0.0.0.0:P, and that program would then get the
    connections meant for us."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    for address in dict.fromkeys([host, wildcard]):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            try:
                sock.bind((address, port))
            except OSError as exc:
                return _listener(port) or str(exc.strerror or exc)
    return None


def _listener(port: int) -> str | None:
    """The program listening on `port`: psutil where it may look (Linux), else lsof (macOS, where
    psutil.net_connections needs root)."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                # The address it listens on: the holder of 127.0.0.1:P may well be on 0.0.0.0.
                return f"{proc.name()} (PID {conn.pid}, listening on {conn.laddr.ip})"
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        pass
    return _lsof_listener(port)


def _lsof_listener(port: int) -> str | None:
    try:
        out = subprocess.run(
            ["lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpc"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    fields = {line[0]: line[1:] for line in out.splitlines() if line[:1] in ("p", "c")}
    if "p" not in fields:
        return None
    return f"{fields.get('c', 'a program')} (PID {fields['p']})"


def rotate_log(path: Path, max_bytes: int) -> bool:
    """If this process's stdout is the log file `path` and it has grown past `max_bytes`, move it to
    `path.1` (replacing the previous one) and write to a fresh file from here on. A server restarted over
    and over by a service manager then keeps at most two logs' worth. True if it rotated."""
    try:
        out, log = os.fstat(1), path.stat()
    except OSError:
        return False
    if (out.st_dev, out.st_ino) != (log.st_dev, log.st_ino) or log.st_size <= max_bytes:
        return False
    os.replace(path, path.with_name(path.name + ".1"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return True


def memory_bytes(pid: int) -> int:
    """Resident memory of the server and its worker."""
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def signal_and_wait(record: PidRecord, sig: int, timeout: float) -> bool:
    """Send `sig` to the server; True once it (and its worker) has exited within `timeout`."""
    try:
        proc = psutil.Process(record.pid)
        family = [proc, *proc.children(recursive=True)]
        if sig == signal.SIGKILL:
            for p in family:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
        else:
            proc.send_signal(sig)  # gunicorn's master passes it on to its worker
    except psutil.NoSuchProcess:
        return True
    _, alive = psutil.wait_procs(family, timeout=timeout)
    return not alive


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# Our own servers are on this machine or named by address: never through a proxy. urllib's default opener
# takes macOS's system proxy (System Settings), whose bypass list has no loopback exception.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_ready(url: str, timeout: float = 1.0) -> bool:
    """Whether the server's /ready answers 200 (up, and its preloads done)."""
    try:
        with DIRECT.open(f"{url}/ready", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def health(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """The server's /health answer, or None if it does not answer."""
    try:
        with DIRECT.open(f"{url}/health", timeout=timeout) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Started:
    """What a background start came to: running and healthy, or why not, with the end of its log."""

    ok: bool
    pid: int
    url: str
    log: Path
    why: str = ""
    log_tail: str = ""


def start_background(
    home: Path, host: str, port: int, flags: Sequence[str], start_timeout: float, stop_timeout: float
) -> Started:
    """Start `mlx-serve start --foreground FLAGS` detached, and wait until /ready answers 200 (its
    preloads done).

    The child reads the settings layers itself (so `flags` are only what the user gave on the command
    line). A server that never becomes healthy is stopped, so no half-started server is left behind."""
    log_path = log_file(private_dir(home), port)
    private_dir(log_path.parent)
    with log_path.open("ab") as log:
        offset = log.tell()
        # Its own session: the server outlives this command and the terminal it came from.
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_serve", "start", "--foreground", *flags],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = url_for(host, port)

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        inst = inspect(home, port)
        return inst.state == "running" and inst.record is not None and inst.record.pid == proc.pid and is_ready(url)

    wait_until(ready, start_timeout, interval=0.2)
    if proc.poll() is None and ready():
        return Started(True, proc.pid, url, log_path)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
        why = f"was not ready (/ready) within {start_timeout:g} s"
    else:
        why = f"exited with code {proc.returncode}"
    return Started(False, proc.pid, url, log_path, why, _tail(log_path, offset))


def _tail(path: Path, offset: int, lines: int = 20) -> str:
    with path.open("rb") as fh:
        fh.seek(offset if path.stat().st_size >= offset else 0)  # from the start of a freshly rotated log
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
