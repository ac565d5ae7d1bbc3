"""The load generator's HTTP client: a pool of keep-alive connections, each an asyncio protocol whose answers
httptools parses (llhttp, the parser uvicorn serves with), driven by callbacks: no task, stream or timeout wrapper
per request.

The client shares a 2-core machine with the server it measures, so its CPU per request bounds the rates it can
offer. On asyncio streams (a task, `wait_for` and a StreamReader per request) it cost 140-290 µs per one-row
request, 3-5× the compiled pod's own, and open-loop rates of a few thousand a second were late and went
unconfirmed; this costs a fraction of that (`python -m bench.load_client`, BENCHMARKS.md "Session 19").

A request's latency counts from `sent`: the caller's clock when the request arrived, so a wait for a free
connection is counted (the server's doing). An answer that does not come is counted under the name of what went
wrong, as the statuses of answers are: TimeoutError (none within `timeout_s`), IncompleteReadError (the connection
closed before the whole answer), ValueError (an answer HTTP cannot parse, or one without Content-Length or chunked
framing), or the connect error's own name (ConnectionRefusedError, ...).

A reused connection that closes before any byte of its answer came back is not a failure of the server: it closed
the connection while idle (uvicorn after 5 s) just as the request went out, so the request never reached the model.
It is sent again, as the proxy's pool does (proxy/forward.py), its latency still counted from `sent`. Each such
connection is dropped, and a new connection is never resent on, so a request goes out at most once per pooled
connection plus once more.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import TYPE_CHECKING, Callable, Optional

import httptools

if TYPE_CHECKING:
    from factory.loadgen import LoadResult

HEAD_LIMIT = 64 * 1024
# The 503 codes that mean "come back later": a pod's queue budget (mf_http), and in front of it the proxy's queue
# budget for a saturated model and its own buffer budget (proxy/errors.py).
SHED_CODES = ("overloaded", "upstream_overloaded", "proxy_overloaded")
Released = Callable[["Connection", bool], None]
Resend = Callable[["Connection", bytes, float], None]


def request_bytes(host: str, port: int, body: bytes) -> bytes:
    """A POST /predict of `body`, encoded once and sent as is every time."""
    return (f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def well_formed_shed(headers: dict[str, str], payload: bytes) -> bool:
    """A 503 a client can act on: `Retry-After` in whole seconds and the error shape with an overload code."""
    try:
        error = json.loads(payload)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return headers.get("retry-after", "").isdigit() and isinstance(error, dict) and error.get("code") in SHED_CODES


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time; `released(connection, reusable)` once it is answered or
    has failed (counted in `result` either way), or `resend(connection, request, sent)` when it was closed under a
    request that never reached the server."""

    def __init__(self, result: "LoadResult", released: Released, resend: Resend, timeout_s: float) -> None:
        self.result = result
        self.released = released
        self.resend = resend
        self.timeout_s = timeout_s
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Optional[asyncio.Transport] = None
        self.lost = asyncio.get_running_loop().create_future()
        self.request = b""
        self.sent: Optional[float] = None  # the request in flight's arrival; None while idle
        self.answers = 0  # answers this connection gave: a request on it after one reuses it
        self.replied = False  # a byte came back for the request in flight
        self.timer: Optional[asyncio.TimerHandle] = None
        self.head = 0
        self.framed = False
        self.retry_after = ""
        self.body: list[bytes] = []

    def send(self, request: bytes, sent: float) -> None:
        self.request, self.sent, self.replied = request, sent, False
        self.timer = asyncio.get_running_loop().call_later(self.timeout_s, self.failed, "TimeoutError")
        self.transport.write(request)

    @property
    def usable(self) -> bool:
        """Not closed by the server while it sat idle (uvicorn closes a keep-alive connection after 5 s)."""
        return not self.lost.done() and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio's protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.sent is None:
            self.close()  # bytes no request asked for: nothing on this connection can be trusted
            return
        self.replied = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.failed("ValueError")

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.sent is not None and self.answers and not self.replied:
            self.timer.cancel()
            sent, self.sent = self.sent, None
            self.resend(self, self.request, sent)
            return
        self.failed("IncompleteReadError")

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self.head, self.framed, self.retry_after, self.body = 0, False, "", []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head += len(name) + len(value)
        name = name.lower()
        if name == b"retry-after":
            self.retry_after = value.decode("latin-1").strip()
        elif name == b"content-length" or (name == b"transfer-encoding" and value.strip().lower() == b"chunked"):
            self.framed = True

    def on_headers_complete(self) -> None:
        if self.head > HEAD_LIMIT or not self.framed:  # an answer that only ends when the connection does
            raise httptools.HttpParserCallbackError("no Content-Length")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.answers += 1
        status = str(self.parser.get_status_code())
        if status == "503" and not well_formed_shed({"retry-after": self.retry_after}, b"".join(self.body)):
            self.result.malformed_sheds += 1
        self._settle(status, self.parser.should_keep_alive())

    def failed(self, name: str) -> None:
        """The request in flight (if any) counted as `name`; the connection closed."""
        if self.sent is not None:
            self._settle(name, False)
        self.close()

    def _settle(self, status: str, reusable: bool) -> None:
        self.timer.cancel()
        self.result.count(status, (time.perf_counter() - self.sent) * 1000)
        self.sent = None
        if not reusable:
            self.close()
        self.released(self, reusable)


class Pool:
    """Up to `limit` connections to host:port. `submit` sends a request on the most recently idle connection (the
    pool's oldest are the ones a server times out), on a new one, or once one is free; `answered()` after each
    answer; `drained()` waits for every request submitted, then closes the connections."""

    def __init__(self, host: str, port: int, limit: int, result: "LoadResult", timeout_s: float,
                 answered: Optional[Callable[[], None]] = None) -> None:
        self.host, self.port, self.limit = host, port, max(1, limit)
        self.result, self.timeout_s, self.answered = result, timeout_s, answered
        self.idle: list[Connection] = []
        self.all: set[Connection] = set()
        self.opening = 0
        self.waiting: collections.deque[tuple[bytes, float]] = collections.deque()
        self.outstanding = 0
        self.empty: Optional[asyncio.Future] = None

    def submit(self, request: bytes, sent: float) -> None:
        self.outstanding += 1
        self._dispatch(request, sent)

    async def drained(self) -> None:
        if self.outstanding:
            self.empty = asyncio.get_running_loop().create_future()
            await self.empty
        for connection in list(self.all):
            connection.close()
        await asyncio.gather(*(connection.lost for connection in self.all))

    def _dispatch(self, request: bytes, sent: float) -> None:
        while self.idle:
            connection = self.idle.pop()
            if connection.usable:
                connection.send(request, sent)
                return
            self._forget(connection)
        if self._room():
            self._open(request, sent)
        else:
            self.waiting.append((request, sent))

    def _room(self) -> bool:
        return len(self.all) + self.opening < self.limit

    def _open(self, request: bytes, sent: float) -> None:
        self.opening += 1
        self.result.connections += 1
        asyncio.get_running_loop().create_task(self._connect(request, sent))

    async def _connect(self, request: bytes, sent: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(loop.create_connection(
                lambda: Connection(self.result, self._released, self._resend, self.timeout_s), self.host, self.port),
                self.timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            self.opening -= 1
            self.result.count(type(exc).__name__, (time.perf_counter() - sent) * 1000)
            self._next(None)
            return
        self.opening -= 1
        self.all.add(connection)
        connection.send(request, sent)

    def _released(self, connection: Connection, reusable: bool) -> None:
        if not reusable:
            self._forget(connection)
        self._next(connection if reusable else None)

    def _resend(self, connection: Connection, request: bytes, sent: float) -> None:
        self._forget(connection)
        self._dispatch(request, sent)

    def _next(self, connection: Optional[Connection]) -> None:
        """One request done: the connection (None when it is gone) goes idle, the oldest waiting request takes it
        (or a new one), and then the caller hears of the answer."""
        self.outstanding -= 1
        if connection is not None:
            self.idle.append(connection)
        if self.waiting and (self.idle or self._room()):
            self._dispatch(*self.waiting.popleft())
        if self.answered is not None:
            self.answered()
        if not self.outstanding and self.empty is not None and not self.empty.done():
            self.empty.set_result(None)

    def _forget(self, connection: Connection) -> None:
        self.all.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
