"""Raw-socket HTTP/1.1 for conformance tests: send exact bytes, read exactly what comes back.

A client library would normalise precisely what these tests look at (framing, interim 100
responses, pipelining, what happens after a malformed request), so bytes go out as written and
the replies are split by hand.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Optional

HOST = "127.0.0.1"
EOF_MARK = "eof"
TIMEOUT_MARK = "timeout"


class Incomplete(AssertionError):
    pass


@dataclass
class Response:
    version: str
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Exchange:
    raw: bytes
    ended_by: str  # EOF_MARK: the proxy closed the connection; TIMEOUT_MARK: it stayed open

    def responses(self, head_only: frozenset[int] = frozenset()) -> list[Response]:
        """Split the bytes into responses; indexes in `head_only` answer HEAD (no body follows)."""
        found, rest = [], self.raw
        while rest:
            head, sep, rest = rest.partition(b"\r\n\r\n")
            if not sep:
                raise Incomplete(f"incomplete response head: {head!r}")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            version, status, _ = status_line.split(" ", 2)
            headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
            length = 0 if len(found) in head_only or status.startswith("1") else int(headers.get("content-length", 0))
            if len(rest) < length:
                raise Incomplete(f"response {len(found) + 1} has {len(rest)} of {length} body bytes")
            found.append(Response(version, int(status), headers, rest[:length]))
            rest = rest[length:]
        return found


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_quiet(sock: socket.socket, quiet: float, limit: float = 10.0,
                     expect: Optional[int] = None, head_only: frozenset[int] = frozenset()) -> Exchange:
    """Read until the peer closes, `expect` responses have fully arrived, or nothing came for `quiet` s."""
    data, deadline = b"", time.monotonic() + limit
    sock.settimeout(quiet)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return Exchange(data, TIMEOUT_MARK)
        except ConnectionResetError:
            return Exchange(data, EOF_MARK)
        if not chunk:
            return Exchange(data, EOF_MARK)
        data += chunk
        if expect is not None and _complete(data, expect, head_only):
            return Exchange(data, TIMEOUT_MARK)
    return Exchange(data, TIMEOUT_MARK)


def _complete(data: bytes, count: int, head_only: frozenset[int]) -> bool:
    try:
        return len(Exchange(data, TIMEOUT_MARK).responses(head_only)) >= count
    except Incomplete:
        return False


def exchange(port: int, data: bytes, quiet: float = 1.0, expect: Optional[int] = None,
             head_only: frozenset[int] = frozenset()) -> Exchange:
    """Send `data` on a fresh connection and read what comes back (`head_only`: as in Exchange.responses)."""
    with connect(port) as sock:
        sock.sendall(data)
        return read_until_quiet(sock, quiet, expect=expect, head_only=head_only)


def post(path: str, body: bytes, *headers: str, version: str = "HTTP/1.1") -> bytes:
    lines = [f"POST {path} {version}", "Host: proxy.test", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
