"""A real server process: `mlx-serve start --foreground` under gunicorn, the official openai client, SIGTERM."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest
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
