"""gunicorn's threaded worker, changed so that a request takes a thread only once it has fully arrived.

gunicorn's gthread worker hands each connection to a thread at once; the thread reads the headers and
the body with blocking calls and no deadline (gunicorn has no setting for one). A client that sends
its headers a byte at a time, or a body shorter than its Content-Length, holds that thread as long as
it likes: 64 such sockets took a server with 64 threads offline. Here the worker's own event loop reads
each request with non-blocking calls until its headers and its body are complete, and only then hands it
to a thread, with everything already buffered. A request not complete within `client_timeout` gets a 408
and its connection is closed; a body over `max_request_bytes` gets a 413 before it is read. Writes are
bounded too (SO_SNDTIMEO), so a client that never reads its answer frees its thread after the timeout.

gunicorn's own error pages (a malformed request line, headers too large) are answered in the API's JSON
error shape instead of HTML.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from mlx_serve.cache import PreloadError  # (the master imports this module: nothing here imports MLX)

HEADER_LIMIT = 64 * 1024  # a header block longer than this is gunicorn's to refuse (431)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
DRAIN_SECONDS = 2.0  # how long a refused client's remaining bytes are read before its connection closes


@dataclass(frozen=True)
class Frame:
    """How far a buffered request has arrived."""

    state: Literal["incomplete", "complete", "too_large", "unsupported", "unreadable"]
    end: int = 0  # the request's last byte + 1, once complete
    header_end: int = 0  # the first body byte, once the headers are in
    expects_continue: bool = False


def frame(buf: bytes, limit: int) -> Frame:
    """Is the HTTP/1.x request at the start of `buf` complete? `limit`: the largest body accepted.

    "unreadable" means the framing is broken (a bad Content-Length, both a length and chunks): gunicorn's
    own parser then refuses it with the right status."""
    header_end = buf.find(b"\r\n\r\n")
    if header_end < 0:
        return Frame("unreadable") if len(buf) > HEADER_LIMIT else Frame("incomplete")
    header_end += 4
    lengths, codings, expects = [], [], False
    for line in buf[:header_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings += [c.strip() for c in value.split(b",")]
        elif name == b"expect":
            expects = value == b"100-continue"
    if codings and codings != [b"chunked"]:
        return Frame("unsupported", header_end=header_end)
    chunked = bool(codings)
    if (chunked and lengths) or len(set(lengths)) > 1:
        return Frame("unreadable", header_end=header_end)
    if chunked:
        end = _chunked_end(buf, header_end, limit)
        if end == "too_large":
            return Frame("too_large", header_end=header_end)
        if end == "unreadable":
            return Frame("unreadable", header_end=header_end)
        if end is None:
            return Frame("incomplete", header_end=header_end, expects_continue=expects)
        return Frame("complete", end, header_end)
    length = 0
    if lengths:
        if not lengths[0].isdigit():
            return Frame("unreadable", header_end=header_end)
        length = int(lengths[0])
    if length > limit:
        return Frame("too_large", header_end=header_end)
    if len(buf) < header_end + length:
        return Frame("incomplete", header_end=header_end, expects_continue=expects)
    return Frame("complete", header_end + length, header_end)


def _chunked_end(buf: bytes, pos: int, limit: int) -> int | str | None:
    """Where a chunked body starting at `pos` ends; None while incomplete."""
    body = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return "unreadable" if len(buf) - pos > 1024 else None
        size_field = buf[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            return "unreadable"
        body += size
        if body > limit:
            return "too_large"
        if size == 0:  # the last chunk, then trailer fields, then an empty line
            if buf[eol + 2 : eol + 4] == b"\r\n":
                return eol + 4
            end = buf.find(b"\r\n\r\n", eol + 2)
            return None if end < 0 else end + 4
        pos = eol + 2 + size + 2
        if len(buf) < pos:
            return None
        if buf[pos - 2 : pos] != b"\r\n":
            return "unreadable"


def _without_expect(head: bytes) -> bytes:
    """The header block without `Expect: 100-continue`, once we have answered it ourselves."""
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"expect:"))


def error_response(status: int, reason: str, message: str, code: str) -> bytes:
    """A complete HTTP response in the API's error shape, closing the connection."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": code, "param": None}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


@functools.lru_cache(maxsize=4)
def _date_of(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def _http_date(timestamp: float | None = None) -> str:
    """gunicorn's http_date, formatted once a second instead of for every response (the Date header
    counts whole seconds)."""
    return _date_of(int(time.time() if timestamp is None else timestamp))


def _write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """Replaces gunicorn's HTML error page (util.write_error) with the API's JSON shape."""
    code = reason.lower().replace(" ", "_").replace("-", "_")
    util.write_nonblock(sock, error_response(status, reason, message or reason, code))


@dataclass(eq=False)
class Reading:
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    continued: bool = False  # "100 Continue" sent
    draining: bool = False  # refused: what the client still sends is read and dropped, then closed


BOOT_ERROR = 3  # gunicorn's WORKER_BOOT_ERROR: the arbiter stops ("Worker failed to boot") instead of retrying


class Worker(ThreadWorker):
    """gthread, with requests read in full on the event loop before a thread takes them."""

    def init_process(self) -> None:
        settings = self.app.settings  # the mlx-serve Server application
        self.client_timeout: float = settings.client_timeout
        self.max_body: int = settings.max_request_bytes
        self._reading: dict[Any, Reading] = {}
        # gunicorn writes its own errors (400, 414, 431) through util.write_error, with no hook: in this
        # worker process they come out in the API's shape.
        util.write_error = _write_json_error
        util.http_date = _http_date
        try:
            super().init_process()  # serves until a stop; a boot error propagates to gunicorn's handling
        except SystemExit as exc:  # SIGINT/SIGQUIT: gunicorn's quick stop
            self.app.exit_worker(exc.code if isinstance(exc.code, int) else 1)
        except PreloadError:  # logged (preload_failed) in one line: no traceback, no bare line from gunicorn
            self.app.exit_worker(BOOT_ERROR)
        self.app.exit_worker(0)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM, a graceful stop: /ready turns 503 at once, and the worker goes on serving for
        `drain_seconds` before it stops accepting, so a load balancer moves traffic away first."""
        drain = self.app.begin_drain() if getattr(self.app, "readiness", None) is not None else 0.0
        if drain <= 0:
            super().handle_exit(sig, frame)
            return
        timer = threading.Timer(drain, super().handle_exit, args=(sig, frame))
        timer.daemon = True
        timer.start()

    # Every path to a thread (a new connection, a kept-alive one readable again, a pipelined request)
    # goes through enqueue_req: read the request first.
    def enqueue_req(self, conn: Any) -> None:
        if getattr(conn, "request_buffered", False):
            conn.request_buffered = False
            super().enqueue_req(conn)
            return
        self._start_reading(conn)

    def _start_reading(self, conn: Any) -> None:
        leftover = b""
        if conn.parser is None:  # a new connection: bound its writes as well
            timeval = struct.pack("ll", int(self.client_timeout), int(self.client_timeout % 1 * 1e6))
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        else:  # a kept-alive connection may hold the start of its next request already
            leftover = conn.parser.unreader.take_buffered()
        conn.sock.setblocking(False)
        state = Reading(time.monotonic() + self.client_timeout, bytearray(leftover))
        self._reading[conn] = state
        # A kept-alive connection comes here because the poller saw it readable, and a new one often has
        # its request waiting already: read at once, and a whole request never waits for another turn
        # of the event loop.
        if self._receive(conn, state):
            return
        self.poller.register(conn.sock, selectors.EVENT_READ, lambda _sock, c=conn: self._on_readable(c))

    def _on_readable(self, conn: Any) -> None:
        state = self._reading.get(conn)
        if state is not None:
            self._receive(conn, state)

    def _receive(self, conn: Any, state: Reading) -> bool:
        """Read what has arrived; True when the connection has left reading (handed over or closed)."""
        try:
            data = conn.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return bool(state.buf) and self._advance(conn, state)  # nothing new; a leftover may be whole
        except OSError:
            data = b""
        if not data:  # the client went away
            self._close(conn)
            return True
        if state.draining:
            return False
        state.buf += data
        return self._advance(conn, state)

    def _advance(self, conn: Any, state: Reading) -> bool:
        """Hand a complete request to a thread, refuse a bad one; True when the connection left reading."""
        verdict = frame(bytes(state.buf), self.max_body)
        if verdict.state == "incomplete":
            if verdict.expects_continue and not state.continued:
                state.continued = True  # curl waits for this before it sends a body over 1 KiB
                self._send(conn, CONTINUE)
            return False
        if verdict.state == "too_large":
            message = f"The request body is larger than the limit of {self.max_body} bytes."
            self._refuse(conn, error_response(413, "Payload Too Large", message, "payload_too_large"))
            return True
        if verdict.state == "unsupported":  # gunicorn would answer 501: this is the client's to fix
            message = "Only a plain or a chunked body is accepted (Transfer-Encoding: chunked, or Content-Length)."
            self._refuse(conn, error_response(400, "Bad Request", message, "invalid_transfer_encoding"))
            return True
        data = bytes(state.buf)
        if state.continued:
            data = _without_expect(data[: verdict.header_end]) + data[verdict.header_end :]
        self._handover(conn, data)
        return True

    def _handover(self, conn: Any, data: bytes) -> None:
        self._forget(conn)
        conn.sock.setblocking(True)
        conn.init()  # the HTTP parser, for a new connection (a no-op for a kept-alive one)
        conn.parser.unreader.unread(data)
        conn.data_ready = True
        conn.request_buffered = True
        self.enqueue_req(conn)

    def _forget(self, conn: Any) -> None:
        self._reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _send(self, conn: Any, data: bytes) -> None:
        with contextlib.suppress(OSError):
            conn.sock.send(data)

    def _refuse(self, conn: Any, response: bytes) -> None:
        """Answer and close, after reading what the client is still sending (briefly): closing with
        unread data would reset the connection, and the client might never see the answer."""
        self._send(conn, response)
        state = self._reading.get(conn)
        if state is None or state.draining:
            self._close(conn)
            return
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        state.draining, state.buf = True, bytearray()
        state.deadline = time.monotonic() + DRAIN_SECONDS
        if not self._registered(conn):
            self.poller.register(conn.sock, selectors.EVENT_READ, lambda _sock, c=conn: self._on_readable(c))

    def _registered(self, conn: Any) -> bool:
        try:
            self.poller.get_key(conn.sock)
            return True
        except (KeyError, ValueError):
            return False

    def _close(self, conn: Any) -> None:
        self._forget(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Also close connections that did not send a whole request in time (every loop, about 1 s)."""
        super().murder_pending()
        now = time.monotonic()
        for conn, state in list(self._reading.items()):
            if state.draining and (now >= state.deadline or not self.alive):
                self._close(conn)
            elif not state.draining and (now >= state.deadline or not self.alive):
                message = f"The request did not arrive within {self.client_timeout:g} s."
                if not self.alive:
                    message = "The server is shutting down."
                self._refuse(conn, error_response(408, "Request Timeout", message, "request_timeout"))
