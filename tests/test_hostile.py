"""Hostile and careless clients against a real server process: stalled and trickling connections, chunked
bodies, malformed HTTP, huge inputs, and a battery of over 300 bad requests, while a well-behaved
client keeps being served. Nothing may answer 5xx, hang, or take the server down."""

from __future__ import annotations

import json
import socket
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


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """One server for the module: small client timeout and body limit, MiniLM preloaded."""
    env = {"MLX_SERVE_CLIENT_TIMEOUT": str(TIMEOUT), "MLX_SERVE_MAX_REQUEST_BYTES": str(9 * 2**20)}
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
                error = json.loads(body)["error"]  # every refusal in the API's shape
                assert error["message"] and error["code"], label
    finally:
        stop.set()
        client.join()
    assert bad == [], "\n".join(bad)
    assert not failed and served[200] > 0
    assert embed(server) == 200
    assert statuses[400] > 150
