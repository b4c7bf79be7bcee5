"""The `mlx-serve` command. Flags become the highest settings layer; output is for people unless --json."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlx_serve import __version__
from mlx_serve.settings import LoadedSettings, SettingsError, load_settings

EXIT_CONFIG = 2


def _settings(cli: dict[str, Any]) -> LoadedSettings:
    return load_settings(cli=cli)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def cmd_config(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    values = _flatten(loaded.settings.model_dump(mode="json"))
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


def cmd_start(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    if not args.foreground:
        print("mlx-serve: background start is not available yet; run `mlx-serve start --foreground`.", file=sys.stderr)
        return 1
    from mlx_serve.server import serve

    serve(loaded.settings)
    return 0


def cmd_pull(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from mlx_serve.store import ModelStore, StoreError

    source = Path(args.source).expanduser()
    if not source.is_dir():
        print(
            f"mlx-serve: {args.source} is not a directory (pulling from the hub is not available yet)", file=sys.stderr
        )
        return 1
    name = args.name or source.resolve().name
    try:
        entry = ModelStore(loaded.settings.models_dir).import_dir(source, name, args.type)
    except StoreError as exc:
        print(f"mlx-serve: {exc}", file=sys.stderr)
        return 1
    print(f"pulled {entry.name} ({entry.type}) into {entry.path}")
    return 0


def cmd_list(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from mlx_serve.store import ModelStore

    entries = ModelStore(loaded.settings.models_dir).list()
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
    start.add_argument("--host", help="address to bind (settings key: host)")
    start.add_argument("--port", type=int, help="port to bind (settings key: port)")
    start.add_argument("--preload", action="append", metavar="NAME", help="load a model before serving; repeatable")
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    start.set_defaults(func=cmd_start)

    config = sub.add_parser("config", help="print the effective settings and where each came from")
    config.add_argument("--json", action="store_true")
    config.set_defaults(func=cmd_config)

    pull = sub.add_parser("pull", help="import a model directory in the Hugging Face layout")
    pull.add_argument("source", help="a local model directory")
    pull.add_argument("--name", help="name in the store (default: the directory's name)")
    pull.add_argument("--type", choices=["embedding", "reranker"], help="default: detected from config.json")
    pull.set_defaults(func=cmd_pull)

    lst = sub.add_parser("list", help="list the models in the store")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    return p


def _cli_layer(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "preload_models": getattr(args, "preload", None),
        "log_level": getattr(args, "log_level", None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        loaded = _settings(_cli_layer(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        print("mlx-serve: not started: fix the settings above.", file=sys.stderr)
        return EXIT_CONFIG
    return int(args.func(args, loaded) or 0)
