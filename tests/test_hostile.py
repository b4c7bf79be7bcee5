"""Hostile and careless clients against a real server process: stalled and trickling connections, chunked
bodies, malformed HTTP, huge inputs, and a battery of over 300 bad requests, while a well-behaved
client keeps being served. Nothing may answer 5xx, hang, or take the server down."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator

import psutil
import pytest

from .conftest import MINILM, ServerProcess

pytestmark = pytest.mark.process
TIMEOUT = 2  # client_timeout for these servers, seconds
SEND_TIMEOUT = 4  # send_timeout for these servers, seconds
SLOW_READERS = 70  # more than the server's 64 threads


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """One server for the module: small client timeout and body limit, MiniLM preloaded."""
    env = {
        "MLX_SERVE_CLIENT_TIMEOUT": str(TIMEOUT),
        "MLX_SERVE_SEND_TIMEOUT": str(SEND_TIMEOUT),
        "MLX_SERVE_MAX_REQUEST_BYTES": str(9 * 2**20),
    }
    server = ServerProcess.start(tmp_path_factory.mktemp("home"), ["--preload", MINILM], env)
    try:
        server.wait_healthy(120)
        yield server
        assert server.stop() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def raw(
    server: ServerProcess, data: bytes, timeout: float = 15, chunks: list[bytes] | None = None
) -> tuple[int, bytes]:
    """Send bytes as they are; the status of the answer and its body. Raises on a hang."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        for chunk in chunks or []:
            sock.sendall(chunk)
        received = b""
        while True:
            part = sock.recv(65536)
            if not part:
                break
            received += part
            head, _, body = received.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 100"):
                received = body
                continue
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                None,
            )
            if length is not None and len(body) >= length:
                break
    status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/") else 0
    return status, received.partition(b"\r\n\r\n")[2]


def request(method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def post_json(path: str, value: object) -> bytes:
    return request("POST", path, json.dumps(value).encode(), {"Content-Type": "application/json"})


def embed(server: ServerProcess, text: str = "steady") -> int:
    body = json.dumps({"model": MINILM, "input": text}).encode()
    with urllib.request.urlopen(f"{server.url}/v1/embeddings", data=body, timeout=30) as resp:
        return resp.status


def test_stalled_and_trickling_connections_starve_nobody(server: ServerProcess) -> None:
    stalled = []
    for i in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port))
        if i % 3 == 0:  # headers, then nothing
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Len")
        elif i % 3 == 1:  # a body shorter than its Content-Length
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Length: 50\r\n\r\n{")
        stalled.append(sock)  # and a third say nothing at all
    trickle_stop = threading.Event()

    def trickle() -> None:  # a byte every half second, forever
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            for byte in b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 100:
                if trickle_stop.wait(0.5):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        with urllib.request.urlopen(f"{server.url}/health", timeout=5) as resp:
            assert resp.status == 200
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        assert embed(server) == 200
        assert time.monotonic() - started < 1.0
        # After client_timeout each stalled connection gets a 408 and is closed.
        time.sleep(TIMEOUT + 1.5)
        answers = []
        for sock in stalled:
            sock.settimeout(2)
            answers.append(sock.recv(200).split(b"\r\n")[0])
        assert set(answers) == {b"HTTP/1.1 408 Request Timeout"}
    finally:
        trickle_stop.set()
        trickler.join()
        for sock in stalled:
            sock.close()


def test_chunked_bodies_work_with_the_same_limit(server: ServerProcess) -> None:
    body = json.dumps({"model": MINILM, "input": ["chunked", "body"]}).encode()
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunks = [b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])] + [b"0\r\n\r\n"]
    status, answer = raw(server, head, chunks=chunks)
    assert status == 200 and len(json.loads(answer)["data"]) == 2
    big = b"x" * (10 * 2**20)
    status, answer = raw(server, head, chunks=[b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)])
    assert status == 413 and json.loads(answer)["error"]["code"] == "payload_too_large"


def health_within(server: ServerProcess, seconds: float) -> float:
    """/health answers 200 within `seconds`; how long it took."""
    started = time.monotonic()
    with urllib.request.urlopen(f"{server.url}/health", timeout=seconds + 5) as resp:
        assert resp.status == 200
    took = time.monotonic() - started
    assert took < seconds, f"/health took {took:.1f} s"
    return took


CHUNKED_HEAD = b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_chunk_size_that_is_not_hex_digits_is_a_400_at_once(server: ServerProcess) -> None:
    """`-6` (an 80-byte request, no key needed) moved the read position backwards and spun the event loop:
    every request timed out until gunicorn killed the worker, models and all.
    Shown by: printf 'POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\n' | nc"""
    for size in (b"-6", b" -7", b"-0x8", b"-7;", b"0x10", b"+5", b"1 2", b"\t5", b"12345678901234567"):
        started = time.monotonic()
        status, body = raw(server, CHUNKED_HEAD + size + b"\r\nabcdefghijklmnop\r\n0\r\n\r\n", timeout=5)
        assert status == 400, (size, body)
        assert json.loads(body)["error"]["code"] == "invalid_chunk"
        assert time.monotonic() - started < 1
    health_within(server, 2)
    assert embed(server) == 200
    # Extensions after a hex size are legal, as is whitespace before them.
    body = json.dumps({"model": MINILM, "input": "chunk"}).encode()
    good = b"%x ;name=value\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    status, _ = raw(server, CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + good)
    assert status == 200


def test_framing_over_its_limits_is_refused_at_once_never_held(server: ServerProcess) -> None:
    """A header block past 64 KB without its blank line, or a chunk-size line past 1 KB, went to a thread that
    waited with no deadline: 70 of them (more than the 64 threads) kept /health down for a minute."""
    header_flood = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * (70 * 1024)
    chunk_flood = CHUNKED_HEAD + b"1;" + b"e" * 2048
    socks = []
    try:
        for i in range(70):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(header_flood if i % 2 == 0 else chunk_flood)
            socks.append(sock)
        health_within(server, 2)
        for i, sock in enumerate(socks):
            status_line = sock.recv(4096).split(b"\r\n")[0]
            assert status_line == (
                b"HTTP/1.1 431 Request Header Fields Too Large" if i % 2 == 0 else b"HTTP/1.1 400 Bad Request"
            )
    finally:
        for sock in socks:
            sock.close()
    health_within(server, 2)


def test_trailers_count_against_the_body_limit(server: ServerProcess) -> None:
    """Chunked trailers were not counted: 50 floods of them added 514 MB to the worker."""
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 1000) for i in range(10_000))  # 10 MB of trailers
    status, body = raw(server, CHUNKED_HEAD + b"2\r\n{}\r\n0\r\n" + trailers + b"\r\n")
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"


def test_rank_fields_take_each_field_once_and_a_few(server: ServerProcess) -> None:
    """rank_fields built each document's text once per listed field, with no limit: an 810 KB body took the
    worker from 735 MB to 2.1 GB, and /rerank with return_documents answered 201 MB for 802 KB."""
    worker = psutil.Process(server.proc.pid).children()[0]
    docs = [{"title": "title " * 3000, "body": "body " * 3000} for _ in range(25)]  # ~830 KB
    body = {"model": MINILM, "query": "q", "documents": docs, "rank_fields": ["title", "body"]}
    status, _ = raw(server, post_json("/rerank", {**body, "return_documents": True}), timeout=120)
    assert status == 200  # the same work once, so that what follows measures only the repetition
    before = worker.memory_info().rss
    body["rank_fields"] = ["title", "body"] * 4000
    status, answer = raw(server, post_json("/rerank", {**body, "return_documents": True}), timeout=120)
    assert status == 200
    assert len(answer) < 2 * 2**20  # the texts once each, not 4,000 times each
    assert worker.memory_info().rss - before < 100 * 2**20
    many = {**body, "rank_fields": [f"f{i}" for i in range(100)]}
    status, answer = raw(server, post_json("/v1/rerank", many))
    assert status == 400 and "at most 16" in json.loads(answer)["error"]["message"]


def test_slow_readers_hold_no_thread_and_are_closed_after_send_timeout(server: ServerProcess) -> None:
    """SO_SNDTIMEO fired only when no byte got through: 70 clients reading an 8 MB answer at 1 KB every 4 s
    kept /health down for 110 s. Now a thread never waits on a client's reading, and a client that has not
    taken its whole answer within send_timeout is disconnected (and counted)."""
    # A 3.5 MB document returned twice: a 7 MB answer, more than the kernel's buffers hold (4 MB at most on
    # Linux), so the rest waits in the server.
    doc = "word " * 700_000
    body = json.dumps({"model": MINILM, "query": "q", "documents": [doc, doc], "return_documents": True})
    data = request("POST", "/v1/rerank", body.encode(), {"Content-Type": "application/json"})
    socks = []
    try:
        for _ in range(SLOW_READERS):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
            sock.settimeout(30)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(data)
            socks.append(sock)
        time.sleep(1)  # every request has been answered into its outbox by now
        health_within(server, 2)
        assert embed(server) == 200
        for sock in socks[:5]:  # a kilobyte each, as the slow readers did
            assert sock.recv(1024)
        time.sleep(SEND_TIMEOUT + 2)
        health_within(server, 2)
        received = []
        for sock in socks:
            total = 0
            while part := sock.recv(1 << 20):
                total += len(part)
            received.append(total)
        assert all(total < len(doc) * 2 for total in received)  # cut off: none had its whole answer
    finally:
        for sock in socks:
            sock.close()
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    closed = [
        line
        for line in metrics.splitlines()
        if line.startswith('mlx_serve_connections_closed_total{reason="send_timeout"}')
    ]
    assert closed and float(closed[0].rsplit(" ", 1)[1]) >= 70


def scraped(server: ServerProcess, sample: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_work_whose_client_has_gone_stops_and_the_next_request_is_served(server: ServerProcess) -> None:
    """A 3.3 MB request whose client left after 2 s made a one-word request wait 111 s: the batches ran
    on for nobody. Now the run stops before its next batch once its client has gone.

    Reproduce: send a few MB of texts to /v1/embeddings, close the socket after a second, then time a
    one-word request."""
    sample = 'mlx_serve_abandoned_requests_total{stage="running"}'
    before = scraped(server, sample)
    texts = [f"text {i} " + "with many words to embed " * 40 for i in range(2000)]  # minutes of batches here
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(post_json("/v1/embeddings", {"model": MINILM, "input": texts}))
    time.sleep(1.5)  # read in full and running by now
    sock.close()
    deadline = time.monotonic() + 30
    while scraped(server, sample) < before + 1:
        assert time.monotonic() < deadline, "the abandoned run went on"
        time.sleep(0.2)
    assert embed(server, "next") == 200


def test_idle_connections_past_the_slots_cannot_keep_health_away(server: ServerProcess) -> None:
    """1,100 idle sockets (gunicorn takes 1,000 connections) slowed /health to 8-10 s: new clients waited
    in the backlog until an idle one timed out. Now the oldest idle connection is closed to make room.

    Reproduce: open 1,100 keep-alive connections, each after one request, then ask /health."""
    idle = []
    try:
        for _ in range(1100):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /ready HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            idle.append(sock)  # kept alive, idle
        started = time.monotonic()
        with urllib.request.urlopen(f"{server.url}/health", timeout=10) as resp:
            assert resp.status == 200
        assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()
    assert scraped(server, 'mlx_serve_connections_closed_total{reason="evicted"}') >= 100


def test_a_stopped_worker_does_not_time_out_clients_that_sent_in_time(server: ServerProcess) -> None:
    """A 30 s SIGSTOP of the worker gave 408s to three clients that had sent everything in time: the
    deadline counted while the server, not the client, was not running.

    Reproduce: kill -STOP the worker, send a whole request, wait past client_timeout, kill -CONT."""
    import os
    import signal

    (worker,) = psutil.Process(server.proc.pid).children()
    whole = post_json("/v1/embeddings", {"model": MINILM, "input": "sent in time"})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(whole[:40])  # the worker has taken the connection and reads it...
    time.sleep(0.5)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        sock.sendall(whole[40:])  # ...and the rest arrives in time, while the worker is stopped
        time.sleep(TIMEOUT + 1.5)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    with sock:
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_expect_100_continue_as_curl_sends_it(server: ServerProcess) -> None:
    body = json.dumps({"model": MINILM, "input": "x" * 2000}).encode()
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # at once, not after a second
        sock.sendall(body)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")


def test_gunicorns_own_errors_come_in_the_api_shape(server: ServerProcess) -> None:
    for data, expected in (
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431),
    ):
        status, body = raw(server, data)
        assert status == expected
        assert set(json.loads(body)["error"]) == {"message", "type", "code", "param"}


def test_head_on_every_get_route(server: ServerProcess) -> None:
    for path in ("/health", "/v1/models", "/api/ps", "/api/tags", "/metrics", "/openapi.json"):
        with urllib.request.urlopen(urllib.request.Request(f"{server.url}{path}", method="HEAD"), timeout=10) as r:
            assert r.status == 200 and r.read() == b""


def test_a_huge_string_costs_what_its_truncated_length_costs(server: ServerProcess) -> None:
    worker = psutil.Process(server.proc.pid).children()[0]
    assert embed(server, "warm " * 300) == 200
    before = worker.memory_info().rss
    started = time.monotonic()
    assert embed(server, "word " * (8 * 2**20 // 5 - 100)) == 200  # ~8 MB of text, cut at 256 tokens
    assert time.monotonic() - started < 3
    assert worker.memory_info().rss - before < 150 * 2**20


def refusal(body: dict) -> tuple[str, str]:
    """The message and code of an error in any route's shape: OpenAI's {"error": {message, code}},
    Ollama's {"error": text, "code"}, TEI's {"error": text, "error_type"}, Cohere's {"id", "message"}."""
    error = body.get("error")
    if isinstance(error, dict):
        return error["message"], error["code"]
    if isinstance(error, str):
        return error, body.get("code") or body["error_type"]
    return body["message"], body["id"]


def battery() -> list[tuple[str, bytes]]:
    """Over 300 bad requests: malformed JSON, wrong types and ranges in every field of every route,
    hostile names and sources, malformed HTTP."""
    e = "/v1/embeddings"
    cases: list[tuple[str, bytes]] = []

    def add(label: str, data: bytes) -> None:
        cases.append((label, data))

    for raw_body in (
        b"{",
        b"{}}",
        b'{"model": "x",}',
        b"NaN",
        b'{"keep_alive": NaN}',
        b'{"a": Infinity}',
        b"[" * 1000 + b"]" * 1000,
        b'{"a":' * 1100 + b"1" + b"}" * 1100,
        b"[" * 100000,
        b'{"n": 1e400}',
        b"\xef\xbb\xbf{}",
        '{"a": "b"}'.encode("utf-16"),
        b'{"a": "\xff"}',
        b" ",
        b"null",
        b"true",
        b"123",
        b'"text"',
        b"[]",
        b'{"model": "\\ud800"}',
        b'{"model": "all-MiniLM-L6-v2", "input": "\\udfff"}',
        b'{"model": "all-MiniLM-L6-v2", "input": ["ok", "\\ud800x"]}',
        b'{"model": "all-MiniLM-L6-v2", "input": "a\\u0000b"}',
        b'{"\\ud800": 1}',
    ):
        for path in (e, "/v1/rerank", "/api/pull", "/api/show", "/api/unload"):
            add(f"{path} {raw_body[:30]!r}", request("POST", path, raw_body, {"Content-Type": "application/json"}))
    good = {"model": MINILM, "input": "x"}
    for field, values in {
        "model": [None, 1, [], {}, "", " ", "../../etc/passwd", "a" * 10000, "\u00e9\u00e8", "nope", True],
        "input": [
            None,
            1,
            1.5,
            True,
            {},
            [],
            [""],
            [[]],
            [None],
            [1, "a"],
            [[1, 2], "a"],
            [[1, -5]],
            [[2**40]],
            [[True]],
            [[1.5]],
            ["a"] * 5000,
            "\u202e\u200b",
        ],
        "encoding_format": ["int8", 5, [], "FLOAT", "binary"],
        "dimensions": [0, -1, 10**9, "64", 1.5, True, [], 385],
        "input_type": ["QUERY", 1, "passage", []],
        "instruction": [1, [], {}],
        "truncate": ["false", 1, "yes", []],
        "keep_alive": [1e300, -1e300, "5x", "1y", True, [], {}, "inf", "nan", "", "-", 10**12, "1e400"],
        "user": [1, [], {}],
    }.items():
        for value in values:
            add(f"embeddings {field}={value!r:.40}", post_json(e, {**good, field: value}))
    rr = {"model": MINILM, "query": "q", "documents": ["a", "b"]}
    for field, values in {
        "query": [None, "", 1, [], {}],
        "documents": [None, [], "one", [1], [""], [{"txt": "a"}], [{"text": 1}], [[]], [None], ["a"] * 5000],
        "top_n": [0, -1, "2", 1.5, True],
        "return_documents": ["true", 1, None],
        "return_text": ["yes", 0],
        "decision_threshold": [-0.1, 1.5, "0.5", None, True],
        "instruction": [1, []],
        "truncate": ["no"],
        "keep_alive": [1e300, "forever", []],
        "model": [None, 7, "nope"],
    }.items():
        for value in values:
            add(f"rerank {field}={value!r:.40}", post_json("/v1/rerank", {**rr, field: value}))
    for body in (
        {},
        {"model": 1},
        {"model": ""},
        {"model": "--help", "stream": False},
        {"model": "-h", "stream": False},
        {"model": "a\u0000b", "stream": False},
        {"model": "acme/x", "as": "../../x", "stream": False},
        {"model": "acme/x", "as": "a\nb", "stream": False},
        {"model": "acme/x", "stream": "false"},
        {"model": "acme/x", "quantize": 3},
        {"model": "acme/x", "type": "classifier"},
        {"model": "/etc", "stream": False},
        {"model": "/dev", "stream": False},
        {"model": "x" * 5000, "stream": False},
        {"name": []},
    ):
        add(f"pull {body!r:.50}", post_json("/api/pull", body))
    for path, method in (("/api/show", "POST"), ("/api/unload", "POST"), ("/api/delete", "DELETE")):
        for body in (
            {},
            {"name": 1},
            {"name": ""},
            {"name": "nope"},
            {"name": "../x"},
            {"name": "a\u0000b"},
            {"name": "x" * 3000},
            {"name": None},
            {"model": []},
            {"name": "a/b"},
        ):
            add(f"{path} {body!r:.40}", request(method, path, json.dumps(body).encode()))
    for method, path in (
        ("GET", e),
        ("PUT", e),
        ("DELETE", "/v1/rerank"),
        ("PATCH", "/api/pull"),
        ("POST", "/health"),
        ("GET", "/api/show"),
        ("POST", "/v1/models"),
        ("GET", "/nope"),
        ("GET", "/../../etc/passwd"),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd"),
        ("GET", "/v1/models/../../x"),
        ("TRACE", "/health"),
        ("FOO", "/health"),
        ("GET", "/api/%00"),
        ("GET", "/" + "é" * 10),
    ):
        add(f"{method} {path[:30]}", request(method, path))
    for label, data in (
        ("no host", b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"),
        ("http/1.0", b"GET /health HTTP/1.0\r\n\r\n"),
        ("bad version", b"GET /health HTTP/9.9\r\nHost: localhost\r\n\r\n"),
        ("bad length", b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n"),
        ("negative length", b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n"),
        (
            "two lengths",
            b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        ),
        (
            "length and chunks",
            b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("gzip coding", b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("bad chunk", b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        (
            "expect odd",
            b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nExpect: 12345\r\nContent-Length: 2\r\n\r\n{}",
        ),
        ("header no colon", b"GET /health HTTP/1.1\r\nHost: localhost\r\nBroken header\r\n\r\n"),
        ("header space name", b"GET /health HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n"),
        ("huge header", b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"),
        ("ctl in header", b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-A: a\x01b\r\n\r\n"),
        ("foreign origin", request("POST", e, json.dumps(good).encode(), {"Origin": "https://evil.example"})),
        ("rebound host", b"GET /api/ps HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
        (
            "text/plain post",
            request(
                "POST",
                "/api/unload",
                b'{"name": "all-MiniLM-L6-v2"}',
                {"Content-Type": "text/plain", "Origin": "http://localhost.evil"},
            ),
        ),
        ("body too large", request("POST", e, b"x" * (10 * 2**20))),
        ("request id junk", request("GET", "/health", None, {"X-Request-ID": "é" * 500})),
        ("underscore header", request("GET", "/health", None, {"X_Forwarded_For": "1.2.3.4"})),
    ):
        add(label, data)
    return cases


def test_a_battery_of_bad_requests_gets_no_5xx_and_no_hang(server: ServerProcess) -> None:
    cases = battery()
    assert len(cases) >= 300
    stop, served, failed = threading.Event(), Counter(), []

    def steady() -> None:  # a well-behaved client all along: none of its requests may be lost
        while not stop.is_set():
            try:
                served[embed(server)] += 1
            except Exception as exc:
                failed.append(repr(exc))

    client = threading.Thread(target=steady)
    client.start()
    statuses: Counter = Counter()
    bad: list[str] = []
    try:
        for label, data in cases:
            try:
                status, body = raw(server, data)
            except TimeoutError:
                status, body = 0, b"no answer within 15 s"
            statuses[status] += 1
            if status >= 500 or status == 0:
                bad.append(f"{label}: {status} {body[:200]!r}")
            elif status >= 400:
                message, code = refusal(json.loads(body))  # every refusal in its route's shape
                assert message and code, label
    finally:
        stop.set()
        client.join()
    assert bad == [], "\n".join(bad)
    assert not failed and served[200] > 0
    assert embed(server) == 200
    assert statuses[400] > 150


def test_loading_the_decoder_families_keeps_the_open_files_limit() -> None:
    """mlx-lm sets RLIMIT_NOFILE to (2048, 4096) when imported, the hard limit for good: a server that
    holds a connection per file would then refuse clients past 2048. Importing our decoders keeps ours."""
    code = (
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))\n"
        "from mlx_serve.engine.families import decoder\n"
        "decoder._mlx_lm_utils()\n"  # what the first decoder model loads
        "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (8192, hard))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stdout + done.stderr[-2000:]
