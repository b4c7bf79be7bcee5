"""The `mlx-serve` command. Flags become the highest settings layer; output is for people unless --json."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlx_serve import __version__, lifecycle
from mlx_serve.settings import LoadedSettings, Settings, SettingsError, effective_values, home_dir, load_settings

EXIT_CONFIG = 2


def cmd_config(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    values = effective_values(loaded.settings)
    if args.json:
        print(
            json.dumps(
                {k: {"value": v, "origin": loaded.origins.get(k, "defaults")} for k, v in values.items()}, indent=2
            )
        )
        return 0
    width = max(len(k) for k in values)
    for key, value in values.items():
        print(f"{key:<{width}}  {json.dumps(value):<24}  {loaded.origins.get(key, 'defaults')}")
    return 0


def _health(url: str, timeout: float = 1.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def _refuse_if_taken(settings: Settings, state: Path) -> int | None:
    """Exit code if this port cannot be ours: a live instance, or another program on it."""
    inst = lifecycle.inspect(state, settings.port)
    if inst.state == "running":
        assert inst.record is not None
        print(
            f"mlx-serve is already running on port {settings.port} (PID {inst.record.pid}): {inst.url}", file=sys.stderr
        )
        return 1
    if inst.state == "stale":
        lifecycle.remove_pid_file(state, settings.port)
        print(f"removed a stale PID file for port {settings.port}: {inst.reason}", file=sys.stderr)
    holder = lifecycle.port_in_use(settings.host, settings.port)
    if holder:
        print(
            f"mlx-serve: port {settings.port} on {settings.host} is in use by {holder}; choose another with --port",
            file=sys.stderr,
        )
        return 1
    return None


def cmd_start(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    settings, state = loaded.settings, home_dir()
    refused = _refuse_if_taken(settings, state)
    if refused is not None:
        return refused
    if args.foreground:
        from mlx_serve.server import serve

        serve(settings, state)
        return 0
    return _start_background(args, settings, state)


def _start_background(args: argparse.Namespace, settings: Settings, state: Path) -> int:
    log_path = lifecycle.log_file(lifecycle.private_dir(state), settings.port)
    lifecycle.private_dir(log_path.parent)
    flags = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in (("host", args.host), ("port", settings.port), ("log_level", args.log_level))
        if v is not None
    ]
    flags += [f"--preload={name}" for name in args.preload or []]
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
    url = lifecycle.url_for(settings.host, settings.port)

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        inst = lifecycle.inspect(state, settings.port)
        return (
            inst.state == "running"
            and inst.record is not None
            and inst.record.pid == proc.pid
            and _health(url) is not None
        )

    lifecycle.wait_until(ready, settings.start_timeout, interval=0.2)
    if proc.poll() is not None or not ready():
        if proc.poll() is None:  # never became healthy: do not leave a half-started server behind
            proc.terminate()
            try:
                proc.wait(timeout=settings.graceful_timeout + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
            why = f"did not answer /health within {settings.start_timeout:g} s"
        else:
            why = f"exited with code {proc.returncode}"
        print(f"mlx-serve: the server {why}. The end of {log_path}:", file=sys.stderr)
        print(_tail(log_path, offset), file=sys.stderr)
        return 1
    print(f"mlx-serve is running at {url} (PID {proc.pid}); log: {log_path}")
    return 0


def _tail(path: Path, offset: int, lines: int = 20) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def _ports(args: argparse.Namespace, settings: Settings, state: Path) -> list[int]:
    if getattr(args, "all", False) or (args.port is None and args.command == "status"):
        return lifecycle.known_ports(state)
    return [settings.port]


def cmd_stop(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    settings, state = loaded.settings, home_dir()
    ports = _ports(args, settings, state)
    if not ports:
        print("no mlx-serve instances are known")
        return 0
    worst = 0
    for port in ports:
        worst = max(worst, _stop_one(port, settings, state, args.force, args.now))
    return worst


def _stop_one(port: int, settings: Settings, state: Path, force: bool, now: bool) -> int:
    inst = lifecycle.inspect(state, port)
    if inst.state == "stopped":
        print(f"port {port}: not running")
        return 0
    if inst.state == "stale":
        lifecycle.remove_pid_file(state, port)
        print(f"port {port}: not running; removed a stale PID file ({inst.reason})")
        return 0
    record = inst.record
    assert record is not None
    if record.manager:
        from mlx_serve import service

        return service.stop_managed(record.manager, settings, port, Path.home(), state)
    if not (force and now):
        if lifecycle.signal_and_wait(record, signal.SIGTERM, settings.graceful_timeout + 5):
            lifecycle.remove_pid_file(state, port, pid=record.pid)  # normally the server has done it
            print(f"port {port}: stopped (PID {record.pid})")
            return 0
        if not force:
            print(
                f"port {port}: still running after {settings.graceful_timeout + 5} s; "
                "`mlx-serve stop --force` kills it",
                file=sys.stderr,
            )
            return 1
    lifecycle.signal_and_wait(record, signal.SIGKILL, 10)
    lifecycle.remove_pid_file(state, port, pid=record.pid)
    print(f"port {port}: killed (PID {record.pid})")
    return 0


PRINTING_COMMANDS = {"config", "list", "show", "ps", "status"}
STATUS_EXIT = {"running": 0, "stale": 1, "stopped": 3}


def cmd_status(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    settings, state = loaded.settings, home_dir()
    ports = _ports(args, settings, state) or [settings.port]
    rows = [_status_row(lifecycle.inspect(state, port)) for port in ports]
    if args.json:
        print(json.dumps(rows if len(rows) > 1 or args.port is None else rows[0], indent=2))
    else:
        for row in rows:
            if row["state"] == "running":
                print(
                    f"port {row['port']}: running, PID {row['pid']}, up {_duration(row['uptime_seconds'])}, "
                    f"{row['url']}, {row['memory_bytes'] / 2**20:.0f} MiB, "
                    f"models loaded: {', '.join(row['models_loaded']) or 'none'}"
                )
            elif row["state"] == "stale":
                print(f"port {row['port']}: stale PID file ({row['reason']})")
            else:
                print(f"port {row['port']}: stopped")
    states = {row["state"] for row in rows}
    return 1 if "stale" in states else 0 if "running" in states else 3


def _status_row(inst: lifecycle.Instance) -> dict[str, Any]:
    row: dict[str, Any] = {"port": inst.port, "state": inst.state}
    if inst.state == "stale":
        row["reason"] = inst.reason
    if inst.state == "running" and inst.record is not None:
        health = _health(inst.url) or {}
        row.update(
            pid=inst.record.pid,
            url=inst.url,
            uptime_seconds=round(time.time() - inst.record.started, 1),
            memory_bytes=lifecycle.memory_bytes(inst.record.pid),
            models_loaded=health.get("models_loaded", []),
            healthy=bool(health),
            manager=inst.record.manager,
        )
    return row


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def cmd_service(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from mlx_serve import service

    try:
        platform_name = args.platform or service.detect_platform()
    except service.UnsupportedPlatform as exc:
        print(f"mlx-serve: {exc}", file=sys.stderr)
        return 1
    settings, state = loaded.settings, home_dir()
    manager = service.manager_for(platform_name, settings, settings.port, Path.home(), state)
    code = service.carry_out(manager.plan(args.verb), args.dry_run)
    if args.verb == "status" and not args.dry_run:
        row = _status_row(lifecycle.inspect(state, settings.port))
        print(
            f"mlx-serve on port {settings.port}: {row['state']}"
            + (f", PID {row['pid']}, {row['url']}, healthy: {row['healthy']}" if row["state"] == "running" else "")
        )
        return STATUS_EXIT[row["state"]]
    return code


def _server_url(settings: Settings) -> str | None:
    inst = lifecycle.inspect(home_dir(), settings.port)
    if inst.state != "running":
        print(f"mlx-serve: no server is running on port {settings.port}", file=sys.stderr)
        return None
    return inst.url


def cmd_unload(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    url = _server_url(loaded.settings)
    if url is None:
        return 3
    request = urllib.request.Request(
        f"{url}/api/unload", data=json.dumps({"name": args.name}).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as exc:
        print(f"mlx-serve: {json.load(exc)['error']['message']}", file=sys.stderr)
        return 1
    print(f"{args.name}: {answer['status'].replace('_', ' ')}")
    return 0


def cmd_ps(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    url = _server_url(loaded.settings)
    if url is None:
        return 3
    with urllib.request.urlopen(f"{url}/api/ps", timeout=10) as resp:
        models = json.load(resp)["models"]
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    rows = [("NAME", "TYPE", "SIZE", "IN FLIGHT", "EXPIRES")]
    rows += [
        (
            m["name"],
            m["type"],
            f"{m['size_bytes'] / 2**20:.0f} MiB",
            str(m["in_flight"]),
            "never" if m["expires_at"] is None else m["expires_at"],
        )
        for m in models
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _store(settings: Settings):
    from mlx_serve.store import ModelStore

    return ModelStore(settings.models_dir, settings.model_aliases)


def cmd_pull(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from mlx_serve.pull import pull
    from mlx_serve.store import StoreError

    as_json = args.progress == "json"  # NDJSON lines, as /api/pull streams them

    def report(progress: Any) -> None:
        if as_json:
            print(json.dumps(progress.to_dict()), flush=True)

    try:
        entry, did = pull(
            _store(loaded.settings),
            args.source,
            args.name,
            args.type,
            args.quantize,
            report=report,
            show_bars=sys.stderr.isatty() and not as_json,
        )
    except StoreError as exc:
        print(
            json.dumps({"error": str(exc)}) if as_json else f"mlx-serve: {exc}",
            file=sys.stdout if as_json else sys.stderr,
            flush=True,
        )
        return 1
    if not as_json:
        print(f"{'pulled' if did else 'already pulled:'} {entry.name} ({entry.type}) into {entry.path}")
    return 0


def cmd_show(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from mlx_serve.store import InvalidNameError

    store = _store(loaded.settings)
    try:
        entry = store.get(args.name)
    except InvalidNameError as exc:
        print(f"mlx-serve: {exc}", file=sys.stderr)
        return 1
    if entry is None:
        print(f"mlx-serve: no model {args.name!r}", file=sys.stderr)
        return 1
    details = store.describe(entry)
    if args.json:
        print(json.dumps(details, indent=2))
    else:
        width = max(len(k) for k in details)
        for key, value in details.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_remove(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from mlx_serve.store import StoreError

    inst = lifecycle.inspect(home_dir(), loaded.settings.port)
    if inst.state == "running":  # let the server unload it after its in-flight requests, then delete
        request = urllib.request.Request(
            f"{inst.url}/api/delete", method="DELETE", data=json.dumps({"name": args.name}).encode()
        )
        try:
            with urllib.request.urlopen(request, timeout=loaded.settings.request_timeout + 10):
                pass
        except urllib.error.HTTPError as exc:
            print(f"mlx-serve: {json.load(exc)['error']['message']}", file=sys.stderr)
            return 1
    else:
        try:
            _store(loaded.settings).delete(args.name)
        except StoreError as exc:
            print(f"mlx-serve: {exc}", file=sys.stderr)
            return 1
    print(f"removed {args.name}")
    return 0


def cmd_list(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    entries = _store(loaded.settings).list()
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    rows = [("NAME", "TYPE", "SOURCE")] + [(e.name, e.type, e.source) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlx-serve", description="Local embedding and reranking server on MLX.")
    p.add_argument("--version", action="version", version=f"mlx-serve {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="start the server")
    start.add_argument("--foreground", action="store_true", help="run in this terminal until stopped")
    start.add_argument("--port", type=int, help="port to bind (settings key: port)")
    start.add_argument("--host", help="address to bind (settings key: host)")
    start.add_argument("--preload", action="append", metavar="NAME", help="load a model before serving; repeatable")
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    start.set_defaults(func=cmd_start)

    stop = sub.add_parser("stop", help="stop a running server (SIGTERM, then wait up to graceful_timeout)")
    stop.add_argument("--port", type=int, help="the server's port (settings key: port)")
    stop.add_argument("--all", action="store_true", help="every instance this user runs")
    stop.add_argument("--force", action="store_true", help="SIGKILL what is still running after the wait")
    stop.add_argument("--now", action="store_true", help="with --force: SIGKILL at once, without the wait")
    stop.set_defaults(func=cmd_stop)

    status = sub.add_parser("status", help="running / stale / stopped, PID, uptime, URL, memory, models")
    status.add_argument("--port", type=int, help="one port (default: every known instance)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    svc = sub.add_parser("service", help="run as a systemd user service (Linux) or a launchd agent (macOS)")
    svc.add_argument("verb", choices=["install", "uninstall", "start", "stop", "status", "enable", "disable"])
    svc.add_argument("--port", type=int, help="the port this service serves (settings key: port)")
    svc.add_argument("--dry-run", action="store_true", help="print the file and the commands instead")
    svc.add_argument("--platform", choices=["linux", "macos"], help="render for this system (default: this one)")
    svc.set_defaults(func=cmd_service)

    unload = sub.add_parser("unload", help="unload a model from a running server (after its in-flight requests)")
    unload.add_argument("name")
    unload.add_argument("--port", type=int, help="the server's port (settings key: port)")
    unload.set_defaults(func=cmd_unload)

    ps = sub.add_parser("ps", help="the models a running server has loaded")
    ps.add_argument("--port", type=int, help="the server's port (settings key: port)")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=cmd_ps)

    config = sub.add_parser("config", help="print the effective settings and where each came from")
    config.add_argument("--json", action="store_true")
    config.set_defaults(func=cmd_config)

    pull = sub.add_parser("pull", help="pull a model from the Hugging Face Hub or a local directory")
    pull.add_argument("source", help="a hub repo id (Qwen/Qwen3-Embedding-0.6B) or a model directory")
    pull.add_argument("--name", help="name in the store (default: the repo's or directory's last part)")
    pull.add_argument("--type", choices=["embedding", "reranker"], help="default: detected from the files")
    pull.add_argument("--quantize", type=int, choices=[4, 8], help="quantize a decoder model's weights")
    pull.add_argument("--progress", choices=["bar", "json"], default="bar", help="json: NDJSON progress lines")
    pull.set_defaults(func=cmd_pull)

    show = sub.add_parser("show", help="a stored model's details")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    remove = sub.add_parser("remove", help="delete a model from the store (a running server unloads it first)")
    remove.add_argument("name")
    remove.add_argument("--port", type=int, help="the running server's port (settings key: port)")
    remove.set_defaults(func=cmd_remove)

    lst = sub.add_parser("list", help="list the models in the store")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    return p


def _cli_layer(args: argparse.Namespace) -> dict[str, Any]:
    # Every subcommand's --port is the `port` setting, so status/stop/service default to config.yaml's.
    return {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "preload_models": getattr(args, "preload", None),
        "log_level": getattr(args, "log_level", None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in PRINTING_COMMANDS and hasattr(signal, "SIGPIPE"):
        # `mlx-serve list | head` ends quietly, like other tools. Never for `start`: a server must get an
        # error, not die, when a client hangs up.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        loaded = load_settings(cli=_cli_layer(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        print("mlx-serve: not started: fix the settings above.", file=sys.stderr)
        return EXIT_CONFIG
    return int(args.func(args, loaded) or 0)
