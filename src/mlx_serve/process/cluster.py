"""Several mlx-serve nodes behind one load balancer: the HAProxy configuration and the Prometheus scrape
configuration, rendered from the settings (`cluster` table; `--node` on the command line), as the service
units are. docs/scale-out.md says how to run it."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from mlx_serve.settings import Settings

TEMPLATES = Path(__file__).parent.parent / "templates"
FALL = 2  # failed checks before a node is out of rotation
BUFFER = 256 * 1024  # HAProxy's buffer: the largest request it can hash by model and retry
_NODE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


class ClusterError(ValueError):
    pass


def check_nodes(nodes: tuple[str, ...] | list[str]) -> list[str]:
    if not nodes:
        raise ClusterError("no nodes: give each as --node HOST:PORT (or set cluster.nodes)")
    out = []
    for node in nodes:
        match = _NODE.match(node)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ClusterError(f"{node!r} is not HOST:PORT")
        out.append(node)
    if len(set(out)) != len(out):
        raise ClusterError("a node is listed twice")
    return out


def drain_needed(settings: Settings) -> float:
    """The drain_seconds a node needs: the balancer must see `FALL` failed checks, and one more interval."""
    return settings.cluster.check_interval * (FALL + 1)


def haproxy(settings: Settings, nodes: list[str]) -> str:
    inter_ms = int(settings.cluster.check_interval * 1000)
    servers = "\n".join(f"    server node{i + 1} {node}" for i, node in enumerate(nodes))
    return Template((TEMPLATES / "haproxy.cfg").read_text()).substitute(
        count=len(nodes),
        drain=f"{drain_needed(settings):g}",
        inter=inter_ms,
        fall=FALL,
        bufsize=BUFFER,
        client_timeout=max(1, int(settings.client_timeout)),
        server_timeout=int(settings.request_timeout) + 10,
        bind=settings.cluster.bind,
        port=settings.cluster.port,
        servers=servers,
    )


def prometheus(settings: Settings, nodes: list[str]) -> str:
    targets = ", ".join(f'"{node}"' for node in nodes)
    return Template((TEMPLATES / "prometheus.yml").read_text()).substitute(count=len(nodes), targets=targets)
