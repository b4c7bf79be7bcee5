"""Three real mlx-serve nodes behind a real HAProxy (the distribution's), with the configuration `mlx-serve
cluster render haproxy` writes: a model's requests all go to one node; a node stopped gracefully under
load hands its model to another with no failed request; a node killed with SIGKILL costs at most the
requests in flight to it, and none once the health checks have noticed."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .conftest import MINILM, ServerProcess, free_port, run_cli

pytestmark = pytest.mark.process

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CHECK = {"MLX_SERVE_CLUSTER__CHECK_INTERVAL": "0.5"}  # checks every 500 ms, down after two failures
NODE_ENV = {"MLX_SERVE_DRAIN_SECONDS": "2"}  # >= what `cluster render` asks for at that interval (1.5 s)


def call(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


def raw_status(url: str, method: str, path: str, body: dict) -> int:
    """The status for a path sent exactly as written (urllib would not send every spelling)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, json.dumps(body), {"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def loaded(node: ServerProcess) -> list[str]:
    return [m["name"] for m in call(f"{node.url}/api/ps")[1].get("models", [])]


def need_haproxy() -> None:
    if not Path(HAPROXY).exists():
        if sys.platform == "darwin":  # make install brings it on Linux only
            pytest.skip("HAProxy is not installed: `brew install haproxy` runs the scale-out tests")
        raise AssertionError("HAProxy is part of the install: run `make install` (it installs haproxy)")


@pytest.fixture
def cluster(home: Path, tmp_path: Path) -> Iterator[tuple[list[ServerProcess], str]]:
    need_haproxy()
    nodes = [ServerProcess.start(home, [], NODE_ENV) for _ in range(3)]
    for node in nodes:
        node.wait_healthy()
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    args = ["cluster", "render", "haproxy", "--port", str(port), "--output", str(config)]
    out = run_cli(home, *args, *[a for n in nodes for a in ("--node", f"127.0.0.1:{n.port}")], env=CHECK)
    assert out.returncode == 0, out.stderr
    check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (tmp_path / "haproxy.log").open("w")
    balancer = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while call(f"{url}/ready")[0] != 200:
        assert time.monotonic() < deadline, (tmp_path / "haproxy.log").read_text()
        time.sleep(0.2)
    yield nodes, url
    balancer.terminate()
    balancer.wait(10)
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


class Load:
    """Clients sending embedding requests through the balancer until stopped, counting what failed."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url, self.statuses, self.stop = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self.stop.is_set():
            status, _ = call(f"{self.url}/v1/embeddings", {"model": MINILM, "input": ["a text", "another"]})
            self.statuses.append(status)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def failed(self) -> int:
        return sum(s != 200 for s in self.statuses)


def owner(nodes: list[ServerProcess]) -> ServerProcess:
    holders = [n for n in nodes if n.proc.poll() is None and MINILM in loaded(n)]
    assert len(holders) == 1, [loaded(n) for n in nodes if n.proc.poll() is None]
    return holders[0]


def test_a_model_lives_on_one_node_and_moves_without_losing_requests(cluster) -> None:
    nodes, url = cluster
    for _ in range(20):
        assert call(f"{url}/v1/embeddings", {"model": MINILM, "input": "hello"})[0] == 200
    first = owner(nodes)  # the others never loaded it

    # Control routes are refused at the balancer: they manage one node's store and cache.
    status, body = call(f"{url}/api/ps")
    assert status == 403 and body["code"] == "node_route"
    # However the path is spelt: HAProxy must read it as the server does (decoded, slashes merged).
    for path in ("//api/pull", "/api%2Fdelete", "/%61pi/unload", "/API/ps", "/api/unload/"):
        assert raw_status(url, "POST", path, {"name": MINILM}) == 403, path
    assert MINILM in loaded(first)  # nothing got through to unload it
    # Ollama's embedding and listing routes are the cluster's own, like /v1/embeddings.
    assert call(f"{url}/api/embed", {"model": MINILM, "input": "hello"})[0] == 200
    assert call(f"{url}/api/tags")[0] == 200

    # A graceful stop under load: the node drains (its /ready says 503 while it still serves), the
    # balancer moves the model's requests to another node, and not one request fails.
    with Load(url) as load:
        time.sleep(1)
        assert first.stop(signal.SIGTERM) == 0
        time.sleep(2)
    assert load.failed() == 0 and len(load.statuses) > 20, load.statuses
    second = owner(nodes)
    assert second is not first

    # SIGKILL: at most the requests in flight to it fail (the balancer retries those it can), and none
    # once the health checks have taken it out.
    with Load(url) as load:
        time.sleep(1)
        family = [psutil.Process(second.proc.pid), *psutil.Process(second.proc.pid).children(recursive=True)]
        for proc in family:
            proc.kill()
        time.sleep(2)  # >= two failed checks at 500 ms
        during = load.failed()
        load.statuses.clear()
        time.sleep(2)
    assert during <= len(load.threads), during
    assert load.failed() == 0 and len(load.statuses) > 10, load.statuses
    third = owner(nodes)
    assert third not in (first, second)


def test_the_prometheus_job_scrapes_every_node_with_a_node_label(home: Path) -> None:
    import yaml

    out = run_cli(home, "cluster", "render", "prometheus", "--node", "mac1.lan:8000", "--node", "10.0.0.2:8001")
    assert out.returncode == 0, out.stderr
    (job,) = yaml.safe_load(out.stdout)
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["mac1.lan:8000", "10.0.0.2:8001"]
    assert {"source_labels": ["__address__"], "target_label": "node"} in job["relabel_configs"]
    bad = run_cli(home, "cluster", "render", "haproxy", "--node", "no-port")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
    none = run_cli(home, "cluster", "render", "haproxy")
    assert none.returncode == 2 and "--node" in none.stderr


def test_a_node_name_that_does_not_resolve_does_not_stop_haproxy(home: Path, tmp_path: Path) -> None:
    """docs/scale-out.md names nodes (mac1.lan): where one does not resolve, HAProxy must still start."""
    need_haproxy()
    config = tmp_path / "haproxy.cfg"
    nodes = ["--node", "127.0.0.1:18001", "--node", "no-such-node.invalid:8000"]
    out = run_cli(home, "cluster", "render", "haproxy", "--output", str(config), *nodes, env=CHECK)
    assert out.returncode == 0, out.stderr
    check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
