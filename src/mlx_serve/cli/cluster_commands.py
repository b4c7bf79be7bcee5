"""`mlx-serve cluster render haproxy|prometheus`: the configuration that puts nodes behind one balancer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlx_serve.process import cluster
from mlx_serve.settings import LoadedSettings


def cmd_cluster(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    settings = loaded.settings
    try:
        nodes = cluster.check_nodes(args.node or settings.cluster.nodes)
    except cluster.ClusterError as exc:
        print(f"mlx-serve: {exc}", file=sys.stderr)
        return 2
    text = cluster.haproxy(settings, nodes) if args.what == "haproxy" else cluster.prometheus(settings, nodes)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    if args.what == "haproxy" and settings.drain_seconds < cluster.drain_needed(settings):
        print(
            f"mlx-serve: note: run each node with drain_seconds >= {cluster.drain_needed(settings):g} "
            f"(this machine's is {settings.drain_seconds:g}), so that a stopping node leaves rotation first",
            file=sys.stderr,
        )
    return 0
