"""gunicorn's threaded worker, changed so that no client can hold a thread: a request takes a thread only
once it has fully arrived, and a thread never waits for a client to take its answer.

gunicorn's gthread worker hands each connection to a thread, which reads the headers and the body with
blocking calls, and writes the answer with blocking calls too. A client that sends a byte at a time, or
reads its answer a kilobyte every few seconds, holds that thread as long as it likes: 64 or 70 such
sockets took a server with 64 threads offline. Here:

- The worker's event loop reads each request with non-blocking calls until framing.py calls it complete,
  and only then hands it to a thread, with everything already buffered. What framing.py refuses (bad
  chunk sizes, headers or chunk lines past their limits, bodies over `max_request_bytes`) is answered
  here at once. A request not complete within `client_timeout` of its first byte gets a 408.
- A thread's writes never block: what the socket does not take at once waits in the connection's outbox,
  which the event loop sends as the client reads. A client must take all that waits for it within
  `send_timeout`, or its connection is closed (counted in `mlx_serve_connections_closed`).
- Connections close without blocking the event loop (gunicorn's graceful close lingers on a read for up
  to two seconds, on the one thread that serves everyone).

Errors answered here (and gunicorn's own: 400, 414, 431) take the JSON shape of the route they were sent to.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import selectors
import socket
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

# The master imports this module: nothing here imports MLX.
from mlx_serve.core import client
from mlx_serve.core.errors import for_status
from mlx_serve.http.dialects import error_response
from mlx_serve.process.framing import Frame, frame, request_line

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 2.0  # how long a closing connection's remaining input is read and dropped
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large", 431: "Request Header Fields Too Large"}


@functools.lru_cache(maxsize=4)
def _date_of(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def _http_date(timestamp: float | None = None) -> str:
    """gunicorn's http_date, formatted once a second instead of for every response (the Date header
    counts whole seconds)."""
    return _date_of(int(time.time() if timestamp is None else timestamp))


def _write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """Replaces gunicorn's HTML error page (util.write_error) with the JSON shape of the route the request
    was sent to (as far as its request line could be read)."""
    code = reason.lower().replace(" ", "_").replace("-", "_")
    method, path = REQUEST_LINES.get(sock, ("", ""))
    util.write_nonblock(sock, error_response(for_status(status, message or reason, code), reason, method, path))


# The method and path of each connection's current request, for gunicorn's own error pages.
REQUEST_LINES: weakref.WeakKeyDictionary[socket.socket, tuple[str, str]] = weakref.WeakKeyDictionary()


class Outbox:
    """What a connection's answer still has to send. A request thread appends and sends what the socket
    takes without waiting; the event loop sends the rest once the thread is done."""

    def __init__(self, sock: socket.socket, send_timeout: float) -> None:
        self.sock = sock
        self.send_timeout = send_timeout
        self.pending: deque[memoryview] = deque()
        self.deadline: float | None = None  # set while bytes wait: the client must take them by then
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            if data:
                self.pending.append(memoryview(data))
            self._send()

    def flush(self) -> bool:
        """Send what the socket takes now; True once nothing waits."""
        with self.lock:
            self._send()
            return not self.pending

    def _send(self) -> None:
        while self.pending:
            try:
                sent = self.sock.send(self.pending[0], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            if sent == len(self.pending[0]):
                self.pending.popleft()
            else:
                self.pending[0] = self.pending[0][sent:]
        if not self.pending:
            self.deadline = None
        elif self.deadline is None:
            self.deadline = time.monotonic() + self.send_timeout


# gunicorn writes every answer through util.write (and util.write_chunk): the outboxes of this worker's
# connections, by socket. A socket without one (none in this worker) is written as gunicorn would.
OUTBOXES: weakref.WeakKeyDictionary[socket.socket, Outbox] = weakref.WeakKeyDictionary()


def _write(sock: socket.socket, data: bytes, chunked: bool = False) -> None:
    if chunked:
        data = b"%X\r\n%s\r\n" % (len(data), data)
    box = OUTBOXES.get(sock)
    if box is None:
        sock.sendall(data)
    else:
        box.write(data)


def _write_chunk(sock: socket.socket, data: bytes | str) -> None:
    _write(sock, data.encode() if isinstance(data, str) else data, chunked=True)


@dataclass(eq=False)
class Reading:
    deadline: float
    method: str = ""
    path: str = ""
    buf: bytearray = field(default_factory=bytearray)
    continued: bool = False  # "100 Continue" sent


def _client_gone(sock: socket.socket) -> bool:
    """Whether the peer has closed or reset the connection. The request was read in full before a thread
    got it, so a read that would not block finds nothing, or the next pipelined request; an end of
    stream means the client left."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset, or closed here
        return True


BOOT_ERROR = 3  # gunicorn's WORKER_BOOT_ERROR: the arbiter stops ("Worker failed to boot") instead of retrying


class Worker(ThreadWorker):
    """gthread, with requests read in full and answers sent by the event loop."""

    def init_process(self) -> None:
        settings = self.app.settings  # the mlx-serve Server application
        self.client_timeout: float = settings.client_timeout
        self.send_timeout: float = settings.send_timeout
        self.max_body: int = settings.max_request_bytes
        self._reading: dict[Any, Reading] = {}
        self._sending: dict[Any, tuple[Outbox, Callable[[], None]]] = {}  # answered, waiting for the client
        self._lingering: dict[Any, float] = {}  # closing: their input read and dropped until the deadline
        # gunicorn writes its own errors (400, 414, 431) through util.write_error, with no hook: in this
        # worker process they come out in the API's shape; and every write goes through an outbox.
        util.write_error = _write_json_error
        util.http_date = _http_date
        util.write = _write
        util.write_chunk = _write_chunk
        try:
            super().init_process()  # serves until a stop; a boot error propagates to gunicorn's handling
        except SystemExit as exc:  # SIGINT/SIGQUIT: gunicorn's quick stop
            self.app.exit_worker(exc.code if isinstance(exc.code, int) else 1)
        self.app.exit_worker(0)

    def handle(self, conn: Any) -> Any:
        """A request on a pool thread; while it runs, the runtime can ask whether its client is still
        there (core/client.py), and drop its work if not."""
        with client.watch(functools.partial(_client_gone, conn.sock)):
            return super().handle(conn)

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGINT/SIGQUIT, a quick stop. gthread's own shuts its thread pool down here, in the signal
        handler: when the signal lands while the event loop is inside the pool's submit, which holds the
        same lock, the worker deadlocks and Ctrl-C hangs until the master kills it (1 stop in 4 under
        load). Nothing here takes a lock: the worker ends in exit_worker, which never needs the pool."""
        self.alive = False
        self.app.cfg.worker_int(self)
        sys.exit(0)

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

    def _count_closed(self, reason: str) -> None:
        counter = getattr(self.app, "connections_closed", None)
        if counter is not None:
            counter(reason)

    # -- reading ---------------------------------------------------------------------------------
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
        if conn.parser is None:  # a new connection
            OUTBOXES[conn.sock] = Outbox(conn.sock, self.send_timeout)
            # A safety net only: a thread given a request framing.py called complete never reads the socket.
            timeval = struct.pack("ll", int(self.client_timeout), int(self.client_timeout % 1 * 1e6))
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        else:  # a kept-alive connection may hold the start of its next request already
            leftover = conn.parser.unreader.take_buffered()
        conn.sock.setblocking(False)
        state = Reading(time.monotonic() + self.client_timeout, buf=bytearray(leftover))
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
        state.buf += data
        return self._advance(conn, state)

    def _advance(self, conn: Any, state: Reading) -> bool:
        """Hand a complete request to a thread, refuse a bad one; True when the connection left reading."""
        data = bytes(state.buf)
        if not state.path:
            state.method, state.path = request_line(data)
            if state.path:
                REQUEST_LINES[conn.sock] = (state.method, state.path)
        verdict = frame(data, self.max_body)
        if verdict.state == "incomplete":
            if verdict.expects_continue and not state.continued:
                state.continued = True  # curl waits for this before it sends a body over 1 KiB
                with contextlib.suppress(OSError):
                    conn.sock.send(CONTINUE)
            return False
        if verdict.state == "refused":
            self._refuse(conn, verdict.status, verdict.message, verdict.code)
            return True
        if state.continued:
            data = _without_expect(data[: verdict.header_end]) + data[verdict.header_end :]
        self._handover(conn, data, verdict)
        return True

    def _handover(self, conn: Any, data: bytes, verdict: Frame) -> None:
        self._forget(conn)
        conn.sock.setblocking(True)
        conn.init()  # the HTTP parser, for a new connection (a no-op for a kept-alive one)
        conn.parser.unreader.unread(data)
        conn.data_ready = True
        conn.request_buffered = True
        self.enqueue_req(conn)

    def _forget(self, conn: Any) -> None:
        self._reading.pop(conn, None)
        self._unregister(conn)

    def _unregister(self, conn: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _refuse(self, conn: Any, status: int, message: str, code: str) -> None:
        """Answer an error in the route's shape, then close (after reading what the client still sends,
        briefly: closing with unread data would reset the connection before the client saw the answer)."""
        state = self._reading.get(conn)
        method, path = (state.method, state.path) if state is not None else ("", "")
        self._forget(conn)
        error = for_status(status, message, code)
        with contextlib.suppress(OSError):
            conn.sock.send(error_response(error, REASONS.get(status, "Error"), method, path))
        self._linger(conn)

    # -- answering -------------------------------------------------------------------------------
    def finish_request(self, conn: Any, fs: Any) -> None:
        """A thread is done with a request (on the event loop). Its answer may still wait in the outbox:
        the connection is kept or closed only once the client has taken it."""
        box = OUTBOXES.get(conn.sock)
        try:
            done = box is None or box.flush()
        except OSError:  # the client went away
            self._close(conn)
            return
        if not done:
            self._sending[conn] = (box, lambda: self._finished(conn, fs))
            self.poller.register(conn.sock, selectors.EVENT_WRITE, lambda _sock, c=conn: self._on_writable(c))
            return
        self._finished(conn, fs)

    def _on_writable(self, conn: Any) -> None:
        waiting = self._sending.get(conn)
        if waiting is None:
            return
        box, then = waiting
        try:
            done = box.flush()
        except OSError:  # the client went away
            self._sending.pop(conn, None)
            self._close(conn)
            return
        if done:
            self._sending.pop(conn, None)
            self._unregister(conn)
            then()

    def _finished(self, conn: Any, fs: Any) -> None:
        try:
            keep = fs.result() if not fs.cancelled() else False
        except Exception:
            keep = False
        if keep:
            super().finish_request(conn, fs)  # kept alive: back to the poller (or its next request)
        else:
            self._linger(conn)

    # -- connection slots --------------------------------------------------------------------------
    def accept(self, listener: Any) -> None:
        """At worker_connections gthread stops accepting, and a new client (a health check) waits in the
        backlog until an idle connection times out: 1,100 idle sockets slowed /health to 8-10 s. Room
        is made instead, by closing the oldest idle connection."""
        super().accept(listener)
        while self.nr_conns >= self.worker_connections and self._evict_one():
            pass

    def _evict_one(self) -> bool:
        """Close the oldest kept-alive connection (HTTP lets a server close an idle one), else the oldest
        that has sent nothing yet; False when every connection is busy."""
        if self.keepalived_conns:
            conn = self.keepalived_conns.popleft()
        else:
            silent = [(state.deadline, conn) for conn, state in self._reading.items() if not state.buf]
            if not silent:
                return False
            conn = min(silent, key=lambda item: item[0])[1]
        self._close(conn)
        self._count_closed("evicted")
        return True

    # -- closing ---------------------------------------------------------------------------------
    def _linger(self, conn: Any) -> None:
        """Close without blocking: send FIN, then read and drop what the client still sends until it closes
        or LINGER_SECONDS pass (murder_pending ends it)."""
        self._unregister(conn)
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self._lingering[conn] = time.monotonic() + LINGER_SECONDS
        self.poller.register(conn.sock, selectors.EVENT_READ, lambda _sock, c=conn: self._on_lingering(c))

    def _on_lingering(self, conn: Any) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)

    def _close(self, conn: Any) -> None:
        self._forget(conn)
        self._sending.pop(conn, None)
        self._lingering.pop(conn, None)
        OUTBOXES.pop(conn.sock, None)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Every loop (about 1 s): requests that did not arrive in time get a 408, answers the client did not
        take in time and lingering closes end."""
        super().murder_pending()
        now = time.monotonic()
        for conn, state in list(self._reading.items()):
            if now < state.deadline and self.alive:
                continue
            # What arrived while this process was not running (stopped, swapped out) counts as in time.
            if self.alive and self._receive(conn, state):
                continue
            message = f"The request did not arrive within {self.client_timeout:g} s (client_timeout)."
            if not self.alive:
                message = "The server is shutting down."
            self._refuse(conn, 408, message, "request_timeout")
        for conn, (box, _) in list(self._sending.items()):
            if box.deadline is not None and now >= box.deadline:
                self._count_closed("send_timeout")
                self._close(conn)
        for conn, deadline in list(self._lingering.items()):
            if now >= deadline:
                self._close(conn)


def _without_expect(head: bytes) -> bytes:
    """The header block without `Expect: 100-continue`, once we have answered it ourselves."""
    lines = head.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"expect:"))
