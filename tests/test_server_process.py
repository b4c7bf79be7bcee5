"""A real server process: `mlx-serve start --foreground` under gunicorn, the official openai client, SIGTERM."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from falcon import testing
from openai import BadRequestError, NotFoundError, OpenAI

from .conftest import MINILM, ServerProcess

pytestmark = pytest.mark.process


@pytest.fixture
def server(start_server) -> ServerProcess:
    return start_server()


def test_openai_client_end_to_end_then_sigterm(server: ServerProcess) -> None:
    url, proc = server.url, server.proc
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")

    # The client asks for base64 by default and decodes it itself.
    result = client.embeddings.create(model=MINILM, input=["first text", "second text"])
    assert [d.index for d in result.data] == [0, 1]
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert result.usage.prompt_tokens == result.usage.total_tokens == 8
    assert result.model == MINILM

    floats = client.embeddings.create(model=MINILM, input="first text", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], atol=1e-6)

    short = client.embeddings.create(model=MINILM, input="first text", dimensions=128)
    assert len(short.data[0].embedding) == 128

    assert MINILM in [m.id for m in client.models.list().data]

    with pytest.raises(NotFoundError) as not_found:
        client.embeddings.create(model="nope", input="x")
    assert not_found.value.code == "model_not_found"
    with pytest.raises(BadRequestError):
        client.embeddings.create(model=MINILM, input=[])

    with urllib.request.urlopen(f"{url}/metrics") as resp:
        metrics = resp.read().decode()
    assert 'mlx_serve_requests_total{method="POST",route="/v1/embeddings",status="200"} 3.0' in metrics

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # The worker exits cleanly too: no C++ abort at exit, no SIGABRT reported by the master.
    text = server.log.read_text()
    assert "terminate called" not in text and "was sent" not in text and "exited with code" not in text
    logs = server.logs()
    assert [e["code"] for e in logs if e["event"] == "worker_exit"] == [0]
    requests = [entry for entry in logs if entry.get("event") == "request" and entry["path"] == "/v1/embeddings"]
    assert requests, "one JSON log line per request"
    first = requests[0]
    assert first["method"] == "POST" and first["status"] == 200 and first["model"] == MINILM
    assert first["tokens"] == 8 and first["ms"] > 0 and len(first["request_id"]) == 32


def test_binds_loopback_by_default(server: ServerProcess) -> None:
    proc = server.proc
    import psutil

    worker_and_master = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children())]
    addresses = {
        c.laddr.ip
        for pid in worker_and_master
        for c in psutil.Process(pid).net_connections()
        if c.status == psutil.CONN_LISTEN
    }
    assert addresses == {"127.0.0.1"}


def test_sigint_stops_cleanly_and_removes_the_pid_file(server: ServerProcess, home: Path) -> None:
    proc, port = server.proc, server.port
    pid_path = home / ".mlx-serve" / f"mlx-serve-{port}.pid"
    assert json.loads(pid_path.read_text())["pid"] == proc.pid
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert not pid_path.exists()
    assert "terminate called" not in server.log.read_text()


def test_a_quick_stop_during_a_hand_over_to_a_thread_does_not_deadlock() -> None:
    """Ctrl-C hung 1 stop in 4 under load: gthread's SIGINT handler shut the thread pool down, taking the
    lock that the interrupted event loop held inside the pool's submit. Here the handler runs while that
    lock is held, as it did then; it must end the worker at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from mlx_serve.process.worker import Worker

    worker = Worker.__new__(Worker)  # only what the handler touches: no process, no sockets
    worker.alive = True
    worker.app = SimpleNamespace(cfg=SimpleNamespace(worker_int=lambda w: None))
    worker.tpool = ThreadPoolExecutor(2)
    outcome: list[BaseException] = []

    def interrupted_submit() -> None:
        with worker.tpool._shutdown_lock:  # what submit holds while it starts a thread
            try:
                worker.handle_quit(signal.SIGINT, None)
            except BaseException as exc:
                outcome.append(exc)

    thread = threading.Thread(target=interrupted_submit, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "the quick-stop handler deadlocked on the thread pool's lock"
    assert isinstance(outcome[0], SystemExit) and worker.alive is False
    worker.tpool.shutdown()


def test_ready_is_503_while_draining_and_requests_are_still_served(start_server) -> None:
    """A graceful stop turns /ready to 503 at once and goes on serving for drain_seconds, so a load
    balancer's checks take the node out before it stops accepting."""
    import urllib.error

    server = start_server(env={"MLX_SERVE_DRAIN_SECONDS": "3"})
    with urllib.request.urlopen(f"{server.url}/ready", timeout=5) as resp:
        assert resp.status == 200 and json.load(resp) == {"status": "ready"}
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server.url}/ready", timeout=5)
    assert err.value.code == 503 and json.load(err.value) == {"status": "draining"}
    body = json.dumps({"model": MINILM, "input": "still served"}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{server.url}/v1/embeddings", data=body), timeout=10) as resp:
        assert resp.status == 200
    assert server.proc.wait(timeout=30) == 0
    assert any(r["event"] == "draining" for r in server.logs())


def test_ready_is_503_while_preloading_and_health_answers(make_app) -> None:
    from mlx_serve.http.app import create_app
    from mlx_serve.serving.readiness import Readiness

    app = make_app()
    readiness = Readiness("preloading")
    client = testing.TestClient(create_app(app.settings, app.runtime, app.runtime.metrics, readiness))
    client_headers = {"Host": "localhost"}
    assert client.simulate_get("/ready", headers=client_headers).status_code == 503
    assert client.simulate_get("/health", headers=client_headers).status_code == 200  # alive all the same
    readiness.set("ready")
    assert client.simulate_get("/ready", headers=client_headers).json == {"status": "ready"}
    readiness.set("draining")
    readiness.set("ready")  # a stop, once begun, is never undone
    assert client.simulate_get("/ready", headers=client_headers).status_code == 503
