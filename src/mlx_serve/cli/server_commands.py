"""Commands about the server itself: config, start, stop, status, service."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mlx_serve.process import lifecycle
from mlx_serve.settings import LoadedSettings, Settings, effective_values, home_dir

STATUS_EXIT = {"running": 0, "stale": 1, "stopped": 3}  # LSB init-script codes


def cmd_config(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    values = effective_values(loaded.settings)
    if values.get("api_key"):
        values["api_key"] = "(set, not shown)"
    if args.json:
        out: dict[str, Any] = {k: {"value": v, "origin": loaded.origins.get(k, "defaults")} for k, v in values.items()}
        for key, (value, origin) in loaded.invalid.items():  # bad settings: what was set, and where
            out.setdefault(key, {})["invalid"] = {"value": value, "origin": origin}
        print(json.dumps(out, indent=2, default=str))
        return 0
    width = max(len(k) for k in values)
    for key, value in values.items():
        # As written where written ("auto", "10MiB", "30m"), not as parsed (null, 10485760, 1800).
        raw = loaded.values.get(key)
        written = isinstance(raw, str) and raw and key != "api_key" and not isinstance(value, str)
        shown = json.dumps(raw if written else value)
        print(f"{key:<{width}}  {shown:<24}  {loaded.origins.get(key, 'defaults')}")
        if key in loaded.invalid:
            bad, origin = loaded.invalid[key]
            print(f"{'':<{width}}  invalid: {json.dumps(bad, default=str)} from {origin}")
    return 0


def _refuse_if_taken(settings: Settings, home: Path) -> int | None:
    """Exit code if this port cannot be ours: a live instance, or another program on it."""
    inst = lifecycle.inspect(home, settings.port)
    if inst.state == "running":
        assert inst.record is not None
        print(
            f"mlx-serve is already running on port {settings.port} (PID {inst.record.pid}): {inst.url}", file=sys.stderr
        )
        return lifecycle.EXIT_PORT_TAKEN
    if inst.state == "stale":
        lifecycle.remove_pid_file(home, settings.port)
        print(f"removed a stale PID file for port {settings.port}: {inst.reason}", file=sys.stderr)
    holder = lifecycle.port_in_use(settings.host, settings.port)
    if holder:
        print(
            f"mlx-serve: port {settings.port} on {settings.host} is in use by {holder}; choose another with --port",
            file=sys.stderr,
        )
        return lifecycle.EXIT_PORT_TAKEN
    return None


def cmd_start(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    settings, home = loaded.settings, home_dir()
    refused = _refuse_if_taken(settings, home)
    if refused is not None:
        return refused
    if not settings.loopback and settings.resolved_api_key() is None:  # the log says it too (server.py)
        print(
            f"mlx-serve: warning: {settings.host} with no api_key: anyone who can reach port {settings.port} can "
            "embed, pull models into the store and delete them; set api_key (or api_key_file), or bind 127.0.0.1",
            file=sys.stderr,
        )
    if args.foreground:
        from mlx_serve.process.server import serve

        serve(settings, home)
        return 0
    # Only what was given on the command line: the child reads the other layers itself.
    flags = [
        f"--{key.replace('_', '-')}={value}"
        for key, value in (("host", args.host), ("port", settings.port), ("log_level", args.log_level))
        if value is not None
    ]
    flags += [f"--preload={name}" for name in args.preload or []]
    started = lifecycle.start_background(
        home, settings.host, settings.port, flags, settings.start_timeout, settings.graceful_timeout + 5
    )
    if not started.ok:
        print(f"mlx-serve: the server {started.why}. The end of {started.log}:", file=sys.stderr)
        print(started.log_tail, file=sys.stderr)
        return 1
    print(f"mlx-serve is running at {started.url} (PID {started.pid}); log: {started.log}")
    return 0


def _ports(args: argparse.Namespace, settings: Settings, home: Path) -> list[int]:
    if getattr(args, "all", False) or (args.port is None and args.command == "status"):
        return lifecycle.known_ports(home)
    return [settings.port]


def cmd_stop(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    settings, home = loaded.settings, home_dir()
    ports = _ports(args, settings, home)
    if not ports:
        print("no mlx-serve instances are known")
        return 0
    force = args.force or args.now  # --now alone would otherwise be a plain stop
    return max(_stop_one(port, settings, home, force, args.now) for port in ports)


def _stop_one(port: int, settings: Settings, home: Path, force: bool, now: bool) -> int:
    inst = lifecycle.inspect(home, port)
    if inst.state == "stopped":
        print(f"port {port}: not running")
        return 0
    if inst.state == "stale":
        lifecycle.remove_pid_file(home, port)
        print(f"port {port}: not running; removed a stale PID file ({inst.reason})")
        return 0
    record = inst.record
    assert record is not None
    if record.manager:
        from mlx_serve.process import service_manager as service

        return service.stop_managed(record.manager, settings, port, Path.home(), home, force=force)
    wait = settings.graceful_timeout + 5
    if not (force and now):
        if lifecycle.signal_and_wait(record, signal.SIGTERM, wait):
            lifecycle.remove_pid_file(home, port, pid=record.pid)  # normally the server has done it
            print(f"port {port}: stopped (PID {record.pid})")
            return 0
        if not force:
            print(f"port {port}: still running after {wait} s; `mlx-serve stop --force` kills it", file=sys.stderr)
            return 1
    lifecycle.signal_and_wait(record, signal.SIGKILL, 10)
    lifecycle.remove_pid_file(home, port, pid=record.pid)
    print(f"port {port}: killed (PID {record.pid})")
    return 0


def cmd_status(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    settings, home = loaded.settings, home_dir()
    ports = _ports(args, settings, home) or [settings.port]
    rows = [status_row(lifecycle.inspect(home, port)) for port in ports]
    if args.json:
        print(json.dumps(rows, indent=2))  # always a list, every row with every field
    else:
        for row in rows:
            if row["state"] == "running":
                mlx = row.get("mlx_memory") or {}
                device = (
                    f" (MLX: {mlx['active_bytes'] / 2**20:.0f} MiB in use, {mlx['cache_bytes'] / 2**20:.0f} MiB cached)"
                    if mlx
                    else ""
                )
                print(
                    f"port {row['port']}: running, PID {row['pid']}, up {_duration(row['uptime_seconds'])}, "
                    f"{row['url']}, {row['memory_bytes'] / 2**20:.0f} MiB{device}, "
                    f"models loaded: {', '.join(row['models_loaded']) or 'none'}"
                )
            elif row["state"] == "stale":
                print(f"port {row['port']}: stale PID file ({row['reason']})")
            else:
                print(f"port {row['port']}: stopped")
    states = {row["state"] for row in rows}
    return 1 if "stale" in states else 0 if "running" in states else 3


STATUS_FIELDS = (
    "pid",
    "url",
    "uptime_seconds",
    "memory_bytes",
    "models_loaded",
    "mlx_memory",
    "healthy",
    "manager",
    "reason",
)


def status_row(inst: lifecycle.Instance) -> dict[str, Any]:
    """One instance for `status --json`: the same fields whatever its state (null where they do not apply)."""
    row: dict[str, Any] = {"port": inst.port, "state": inst.state, **dict.fromkeys(STATUS_FIELDS)}
    if inst.state == "stale":
        row["reason"] = inst.reason
    if inst.state == "running" and inst.record is not None:
        health = lifecycle.health(inst.url) or {}
        row.update(
            pid=inst.record.pid,
            url=inst.url,
            uptime_seconds=round(time.time() - inst.record.started, 1),
            memory_bytes=lifecycle.memory_bytes(inst.record.pid),
            models_loaded=health.get("models_loaded", []),
            mlx_memory=health.get("memory"),
            healthy=bool(health),
            manager=inst.record.manager,
        )
    return row


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def cmd_service(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from mlx_serve.process import service_manager as service

    try:
        here = service.detect_platform()
    except service.UnsupportedPlatform as exc:
        if not (args.platform and args.dry_run):
            print(f"mlx-serve: {exc}", file=sys.stderr)
            return 1
        here = None
    platform_name = args.platform or here
    if platform_name == "macos" and here == "macos" and os.environ.get("SUDO_USER") and not args.dry_run:
        # Under sudo launchctl's domain would be root's (gui/0): the agent would run as root, or not at all.
        print(
            "mlx-serve: run `mlx-serve service` as yourself, not with sudo: it manages your own agent", file=sys.stderr
        )
        return 2
    if platform_name != here and not args.dry_run:
        # Another system's files are for reading: written here they would land where nothing loads them.
        print(f"mlx-serve: --platform {platform_name} on this system works only with --dry-run", file=sys.stderr)
        return 2
    settings, home = loaded.settings, home_dir()
    manager = service.manager_for(platform_name, settings, settings.port, Path.home(), home)
    code = service.carry_out(manager.plan(args.verb), args.dry_run)
    if args.verb == "status" and not args.dry_run:
        row = status_row(lifecycle.inspect(home, settings.port))
        print(
            f"mlx-serve on port {settings.port}: {row['state']}"
            + (f", PID {row['pid']}, {row['url']}, healthy: {row['healthy']}" if row["state"] == "running" else "")
        )
        return STATUS_EXIT[row["state"]]
    return code
