"""Commands about models: pull, list, show, remove (the store) and ps, unload (a running server's cache)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import sys
from functools import partial
from pathlib import Path

from mlx_serve.cli.client import ClientError, ServerClient
from mlx_serve.cli.table import print_table
from mlx_serve.process import lifecycle
from mlx_serve.settings import LoadedSettings, Settings, home_dir
from mlx_serve.store.store import ModelStore, StoreError


def _store(settings: Settings) -> ModelStore:
    return ModelStore(settings.models_dir, settings.model_aliases)


def _fail(message: str, code: int = 1) -> int:
    print(f"mlx-serve: {message}", file=sys.stderr)
    return code


def _running_server(settings: Settings, timeout: float = 30.0, port_given: bool = True) -> ServerClient | None:
    """The server on the `port` setting; without --port, also the only one running if that port has none."""
    home = home_dir()
    inst = lifecycle.inspect(home, settings.port)
    if inst.state != "running" and not port_given:
        running = [
            i for i in map(partial(lifecycle.inspect, home), lifecycle.known_ports(home)) if i.state == "running"
        ]
        if len(running) > 1:
            ports = ", ".join(str(i.port) for i in running)
            raise ClientError(f"servers run on ports {ports}: name one with --port")
        inst = running[0] if running else inst
    return ServerClient(inst.url, timeout, settings.resolved_api_key()) if inst.state == "running" else None


def _server_for(args: argparse.Namespace, settings: Settings) -> ServerClient:
    server = _running_server(settings, port_given=args.port is not None)
    if server is None:
        where = f"on port {settings.port}" if args.port is not None else "(no instance is known to be running)"
        raise ClientError(f"no server is running {where}")
    return server


def _relative(message: str, store_root: Path, source: str) -> str:
    """An error for an HTTP client (`--progress json` is what /api/pull relays): this machine's absolute
    paths become paths in the pulled folder (`folder:NAME/...`) or in the store (`models_dir/...`)."""
    places: list[tuple[Path, str]] = [(store_root, "models_dir")]
    local = Path(source).expanduser()
    if local.is_absolute() or local.exists():
        places.append((local.absolute(), f"folder:{local.absolute().name}"))
    for path, label in list(places):
        with contextlib.suppress(OSError):
            places.append((path.resolve(), label))
    for path, label in sorted(places, key=lambda p: -len(str(p[0]))):  # the longest first
        message = message.replace(str(path), label)
    return message


def cmd_pull(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from mlx_serve.engine.verify import prepare
    from mlx_serve.store.progress import LineWriter
    from mlx_serve.store.pull import pull

    # `--progress json`: NDJSON lines on standard output (what /api/pull relays), errors included.
    writer = LineWriter(sys.stdout.buffer) if args.progress == "json" else None

    def interrupted(signum: int, frame: object) -> None:
        # Ctrl-C: one line, and out at once. Raising instead would unwind into huggingface_hub's download
        # pool, which waits for every running download first. What was staged is cleared by the next pull.
        message = "the pull was interrupted; nothing was stored"
        if writer:
            writer.error(message)
        print(f"mlx-serve: {message}", file=sys.stderr, flush=True)
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    try:
        entry, did = pull(
            _store(loaded.settings),
            args.source,
            name=args.name,
            type=args.type,
            quantize=args.quantize,
            report=writer.progress if writer else None,
            show_bars=sys.stderr.isatty() and writer is None,
            replace=args.replace,
            prepare=prepare,
        )
    except StoreError as exc:
        message, code = str(exc), 1
    except Exception as exc:  # a bug or an unforeseen failure: still one sentence, for the CLI and /api/pull
        message, code = f"the pull failed: {type(exc).__name__}: {exc}", 1
    else:
        message, code = "", 0
    if code:
        if writer:
            writer.error(_relative(message, _store(loaded.settings).root, args.source))
            return code
        return _fail(message, code)
    if not writer:
        print(f"{'pulled' if did else 'already pulled:'} {entry.name} ({entry.type}) into {entry.path}")
    return 0


def cmd_list(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    entries = _store(loaded.settings).list()
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    else:
        print_table(("NAME", "TYPE", "SOURCE"), [(e.name, e.type, e.source) for e in entries])
    return 0


def cmd_show(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    store = _store(loaded.settings)
    try:
        entry = store.get(args.name)
    except StoreError as exc:
        return _fail(str(exc))
    if entry is None:
        return _fail(f"no model {args.name!r}")
    details = store.describe(entry)
    if args.json:
        print(json.dumps(details, indent=2))
    else:
        width = max(len(k) for k in details)
        for key, value in details.items():
            print(f"{key:<{width}}  {_shown(key, value)}")
    return 0


def _shown(key: str, value: object) -> str:
    """A detail for people: times in UTC like pulled_at, sizes in MB (`--json` keeps the raw values)."""
    if value is None:
        return "-"
    if key == "created" and isinstance(value, int):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat(timespec="seconds")
    if key == "size" and isinstance(value, int):
        return f"{value / 1e6:.1f} MB ({value} bytes)"
    return str(value)


def cmd_remove(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    settings = loaded.settings
    try:
        # Without --port, also the only server running (as ps and unload find it): it must unload the model.
        server = _running_server(settings, settings.request_timeout + 10, port_given=args.port is not None)
        if server is not None:  # the server unloads it after its in-flight requests, then deletes it
            server.delete("/api/delete", {"name": args.name})
        else:
            _store(settings).delete(args.name)
    except (ClientError, StoreError) as exc:
        return _fail(str(exc))
    print(f"removed {args.name}")
    return 0


def cmd_ps(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    try:
        server = _server_for(args, loaded.settings)
    except ClientError as exc:
        return _fail(str(exc), 3)
    try:
        models = server.get("/api/ps")["models"]
    except ClientError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    rows = [
        (
            m["name"],
            m["type"],
            f"{m['size_bytes'] / 2**20:.0f} MiB",
            m["in_flight"],
            "never" if m["expires_at"] is None else m["expires_at"],
        )
        for m in models
    ]
    print_table(("NAME", "TYPE", "SIZE", "IN FLIGHT", "EXPIRES"), rows)
    return 0


def cmd_unload(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    try:
        server = _server_for(args, loaded.settings)
    except ClientError as exc:
        return _fail(str(exc), 3)
    try:
        answer = server.post("/api/unload", {"name": args.name})
    except ClientError as exc:
        return _fail(str(exc))
    print(f"{args.name}: {answer['status'].replace('_', ' ')}")
    return 0
