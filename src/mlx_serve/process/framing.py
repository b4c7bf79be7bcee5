"""How far a buffered HTTP/1.x request has arrived, read from its bytes alone: complete, still coming, or
refused (with the status and the sentence to answer).

The worker reads every request in full on its event loop before a thread takes it (worker.py). That is
only safe if this verdict is strict: a request it calls complete must be one gunicorn's parser reads
without asking the socket for more, and anything it cannot frame must be answered here, at once, never
handed to a thread that would wait on the client. So: chunk sizes are hex digits and nothing else (a
`-6` once moved the read position backwards and spun the event loop), header blocks and chunk lines have
limits, and a chunked body's framing and trailers count against the body limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

HEADER_LIMIT = 64 * 1024  # a header block without its blank line past this: 431
CHUNK_LINE_LIMIT = 1024  # a chunk-size line (with its extensions) past this: 400
# Chunk framing (size lines, CRLFs) and trailers may add this much beyond the body limit: a client that
# sends its body in tiny chunks is legal, one that sends a kilobyte of extensions per byte is not.
FRAMING_ALLOWANCE = 64 * 1024
# RFC 9112 7.1: chunk-size = 1*HEXDIG, then optional whitespace and `;` extensions. Nothing else: no sign,
# no `0x`, no leading space (Python's int(x, 16) accepts all three).
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?\Z", re.DOTALL)

State = Literal["incomplete", "complete", "refused"]


@dataclass(frozen=True)
class Frame:
    """How far a buffered request has arrived."""

    state: State
    end: int = 0  # the request's last byte + 1, once complete
    header_end: int = 0  # the first body byte, once the headers are in
    expects_continue: bool = False
    status: int = 0  # when refused: the status to answer, and why
    message: str = ""
    code: str = ""


def refused(status: int, message: str, code: str, header_end: int = 0) -> Frame:
    return Frame("refused", header_end=header_end, status=status, message=message, code=code)


def request_line(buf: bytes) -> tuple[str, str]:
    """The method and path of the request line at the start of `buf` ("" while it has not arrived), so that
    an error answered before the app runs takes the route's own shape."""
    line = buf[: buf.find(b"\r\n")] if b"\r\n" in buf else b""
    parts = line.split(b" ")
    if len(parts) < 2:
        return "", ""
    return parts[0].decode("latin-1"), parts[1].split(b"?", 1)[0].decode("latin-1")


def frame(buf: bytes, limit: int) -> Frame:
    """Is the HTTP/1.x request at the start of `buf` complete? `limit`: the largest body accepted."""
    header_end = buf.find(b"\r\n\r\n")
    if header_end < 0:
        if len(buf) > HEADER_LIMIT:
            return refused(
                431, f"The request's headers are longer than {HEADER_LIMIT} bytes.", "request_header_fields_too_large"
            )
        return Frame("incomplete")
    header_end += 4
    if header_end > HEADER_LIMIT:
        return refused(
            431, f"The request's headers are longer than {HEADER_LIMIT} bytes.", "request_header_fields_too_large"
        )
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
        message = "Only a plain or a chunked body is accepted (Transfer-Encoding: chunked, or Content-Length)."
        return refused(400, message, "invalid_transfer_encoding", header_end)
    if codings and lengths:
        return refused(400, "A request may not have both Content-Length and chunks.", "invalid_framing", header_end)
    if len(set(lengths)) > 1:
        return refused(400, "The request has two different Content-Lengths.", "invalid_framing", header_end)
    if codings:
        return _chunked(buf, header_end, limit, expects)
    length = 0
    if lengths:
        if not lengths[0].isdigit() or len(lengths[0]) > 18:
            return refused(400, "Content-Length must be a number of bytes.", "invalid_content_length", header_end)
        length = int(lengths[0])
    if length > limit:
        return too_large(limit, header_end)
    if len(buf) < header_end + length:
        return Frame("incomplete", header_end=header_end, expects_continue=expects)
    return Frame("complete", header_end + length, header_end)


def too_large(limit: int, header_end: int = 0) -> Frame:
    message = f"The request body is larger than the limit of {limit} bytes (max_request_bytes)."
    return refused(413, message, "payload_too_large", header_end)


def _chunked(buf: bytes, header_end: int, limit: int, expects: bool) -> Frame:
    """A chunked body starting at `header_end`: complete, incomplete, or refused."""
    pos, body = header_end, 0
    incomplete = Frame("incomplete", header_end=header_end, expects_continue=expects)
    if len(buf) - header_end > limit + FRAMING_ALLOWANCE:
        return too_large(limit, header_end)
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > CHUNK_LINE_LIMIT:
                return refused(400, f"A chunk-size line is longer than {CHUNK_LINE_LIMIT} bytes.", "invalid_chunk")
            return incomplete
        if eol - pos > CHUNK_LINE_LIMIT:
            return refused(400, f"A chunk-size line is longer than {CHUNK_LINE_LIMIT} bytes.", "invalid_chunk")
        match = _CHUNK_SIZE.match(buf[pos:eol])
        if match is None:
            shown = buf[pos:eol][:40].decode("latin-1")
            return refused(400, f"{shown!r} is not a chunk size (hexadecimal digits).", "invalid_chunk", header_end)
        size = int(match.group(1), 16)
        body += size
        if body > limit:
            return too_large(limit, header_end)
        if size == 0:  # the last chunk, then trailer fields, then an empty line
            end = eol if buf[eol + 2 : eol + 4] == b"\r\n" else buf.find(b"\r\n\r\n", eol + 2)
            if end < 0:
                # Trailers count against the limit too: 50 floods of them once held half a gigabyte.
                return too_large(limit, header_end) if body + len(buf) - eol > limit else incomplete
            if body + (end - eol) > limit:
                return too_large(limit, header_end)
            return Frame("complete", end + 4, header_end)
        pos = eol + 2 + size + 2
        if len(buf) < pos:
            return incomplete
        if buf[pos - 2 : pos] != b"\r\n":
            return refused(400, "A chunk is longer than its size says.", "invalid_chunk", header_end)
