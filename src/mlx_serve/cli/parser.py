"""The command line: every subcommand, its flags, and the settings layer the flags make."""

from __future__ import annotations

import argparse
from typing import Any

from mlx_serve import __version__
from mlx_serve.cli import cluster_commands as clusters
from mlx_serve.cli import model_commands as models
from mlx_serve.cli import server_commands as server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlx-serve", description="Local embedding and reranking server on MLX.")
    p.add_argument("--version", action="version", version=f"mlx-serve {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="start the server")
    start.add_argument("--foreground", action="store_true", help="run in this terminal until stopped")
    start.add_argument("--port", type=int, help="port to bind (settings key: port)")
    start.add_argument("--host", help="address to bind (settings key: host)")
    start.add_argument("--preload", action="append", metavar="NAME", help="load a model before serving; repeatable")
    start.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="the least severe log lines shown"
    )
    start.set_defaults(func=server.cmd_start)

    stop = sub.add_parser("stop", help="stop a running server (SIGTERM, then wait up to graceful_timeout)")
    which = stop.add_mutually_exclusive_group()
    which.add_argument("--port", type=int, help="the server's port (settings key: port)")
    which.add_argument("--all", action="store_true", help="every instance this user runs")
    stop.add_argument("--force", action="store_true", help="SIGKILL what is still running after the wait")
    stop.add_argument("--now", action="store_true", help="SIGKILL at once, without the wait (implies --force)")
    stop.set_defaults(func=server.cmd_stop)

    status = sub.add_parser("status", help="running / stale / stopped, PID, uptime, URL, memory, models")
    status.add_argument("--port", type=int, help="one port (default: every known instance)")
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    status.set_defaults(func=server.cmd_status)

    svc = sub.add_parser("service", help="run as a systemd user service (Linux) or a launchd agent (macOS)")
    svc.add_argument("verb", choices=["install", "uninstall", "start", "stop", "status", "enable", "disable"])
    svc.add_argument("--port", type=int, help="the port this service serves (settings key: port)")
    svc.add_argument("--dry-run", action="store_true", help="print the file and the commands instead")
    svc.add_argument("--platform", choices=["linux", "macos"], help="render for this system (default: this one)")
    svc.set_defaults(func=server.cmd_service)

    clu = sub.add_parser("cluster", help="configuration for several nodes behind a load balancer")
    clu_sub = clu.add_subparsers(dest="cluster_command", required=True)
    render = clu_sub.add_parser("render", help="print the HAProxy or Prometheus configuration for the nodes")
    render.add_argument("what", choices=["haproxy", "prometheus"])
    render.add_argument("--node", action="append", metavar="HOST:PORT", help="a node; repeatable (cluster.nodes)")
    render.add_argument("--port", type=int, help="the balancer's port (cluster.port)")
    render.add_argument("--bind", help="the balancer's address (cluster.bind)")
    render.add_argument("--output", metavar="FILE", help="write it to FILE instead of printing it")
    render.set_defaults(func=clusters.cmd_cluster)

    config = sub.add_parser("config", help="print the effective settings and where each came from")
    config.add_argument("--json", action="store_true", help="the settings as one JSON object")
    config.set_defaults(func=server.cmd_config)

    unload = sub.add_parser("unload", help="unload a model from a running server (after its in-flight requests)")
    unload.add_argument("name")
    unload.add_argument(
        "--port", type=int, help="the server's port (default: the port setting, else the only one running)"
    )
    unload.set_defaults(func=models.cmd_unload)

    ps = sub.add_parser("ps", help="the models a running server has loaded")
    ps.add_argument("--port", type=int, help="the server's port (default: the port setting, else the only one running)")
    ps.add_argument("--json", action="store_true", help="the loaded models as JSON")
    ps.set_defaults(func=models.cmd_ps)

    pull = sub.add_parser("pull", help="pull a model from the Hugging Face Hub or a local directory")
    pull.add_argument("source", help="a hub repo id (Qwen/Qwen3-Embedding-0.6B) or a model directory")
    pull.add_argument("--name", help="name in the store (default: the repo's or directory's last part)")
    pull.add_argument(
        "--type", choices=["embedding", "reranker", "classifier"], help="default: detected from the files"
    )
    pull.add_argument("--quantize", type=int, choices=[4, 8], help="quantize a decoder model's weights")
    pull.add_argument("--progress", choices=["bar", "json"], default="bar", help="json: NDJSON progress lines")
    pull.add_argument(
        "--replace", action="store_true", help="take over a name that means another model (e.g. the built-in one)"
    )
    pull.set_defaults(func=models.cmd_pull)

    show = sub.add_parser("show", help="a stored model's details")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="the details as one JSON object")
    show.set_defaults(func=models.cmd_show)

    remove = sub.add_parser("remove", help="delete a model from the store (a running server unloads it first)")
    remove.add_argument("name")
    remove.add_argument("--port", type=int, help="the running server's port (settings key: port)")
    remove.set_defaults(func=models.cmd_remove)

    lst = sub.add_parser("list", help="list the models in the store")
    lst.add_argument("--json", action="store_true", help="the models as JSON")
    lst.set_defaults(func=models.cmd_list)
    return p


def cli_layer(args: argparse.Namespace) -> dict[str, Any]:
    """The highest settings layer. Every subcommand's --port is the `port` setting, so status, stop and
    service default to config.yaml's."""
    if getattr(args, "command", None) == "cluster":  # its --port and --bind are the balancer's
        return {"cluster.port": args.port, "cluster.bind": args.bind}
    return {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "preload_models": getattr(args, "preload", None),
        "log_level": getattr(args, "log_level", None),
    }
