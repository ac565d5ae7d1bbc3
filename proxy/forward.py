"""The upstream client: pooled keep-alive HTTP/1.1 connections, parsed with httptools.

Why not a shared aiohttp.ClientSession: measured here (BENCHMARKS.md, "Proxy"), a plain ASGI
proxy on aiohttp reached ~21 % of nginx's throughput, the session's per-request objects being
the largest cost. Here a request is one `transport.write` of prebuilt bytes and one callback
from the response parser. The client speaks only what the proxy sends: one POST at a time per
connection, to addresses taken from the compiled routing table.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Optional, Union

import httptools

from proxy.budget import BufferBudget, Held
from proxy.routing import Target

log = logging.getLogger("proxy.forward")


class UpstreamError(Exception):
    """A failed exchange. kind: connect | timeout | reset | protocol | too_large | local | over_budget (a metric
    label; local: the proxy itself is out of file descriptors; over_budget: of answer bytes, proxy.budget)."""

    def __init__(self, kind: str, detail: str, *, before_response: bool = False):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.before_response = before_response


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    connection: Optional[bytes] = None  # the Connection header's value, if any
    held: Optional[Held] = None  # its bytes of the buffer budget, for as long as the answer lives


Result = Union[UpstreamResponse, UpstreamError]
OnResult = Callable[[Result], None]


def _retryable(result: Result, reused: bool) -> bool:
    """A pooled connection the upstream closed while idle fails before any byte comes back:
    the request never reached the model, so sending it once more is safe."""
    return isinstance(result, UpstreamError) and result.kind == "reset" and result.before_response and reused


class _Connection(asyncio.Protocol):
    """One upstream connection carrying at most one exchange at a time. Completion is a plain callback, not a
    future: on the hot path that saves a task wake-up and a coroutine resumption per request, which cost more
    than the rest of the forwarding."""

    def __init__(self, pool: "_Pool", loop: asyncio.AbstractEventLoop):
        self._pool = pool
        self._loop = loop
        self._deadline = 0.0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._parser = httptools.HttpResponseParser(self)
        self.transport: Optional[asyncio.Transport] = None
        self._on_result: Optional[OnResult] = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._connection_header: Optional[bytes] = None
        self._body: list[bytes] = []
        self._size = 0
        self._taken = 0  # of the pool's BufferBudget, given back when the exchange ends
        self._received = False
        self._headers_done = False
        self._framed = False
        self.reusable = True

    def start(self, data: bytes, on_result: OnResult, deadline: float) -> None:
        self._on_result = on_result
        self._headers, self._body, self._size = [], [], 0
        self._connection_header = None
        self._received = self._headers_done = self._framed = False
        self._deadline = deadline
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        self.transport.write(data)

    def _check_deadline(self) -> None:
        """One timer per connection, re-armed lazily (a timer per request costs ~3 µs in uvloop): deadlines only
        grow (same timeout, later start), so a timer armed for an earlier exchange fires early, finds the
        current exchange still in time and re-arms for it."""
        self._timer = None
        if self._on_result is None:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._fail("timeout", "no complete response in time")

    def close(self) -> None:
        self.reusable = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()

    def _finish(self, result: Result) -> None:
        self._pool.budget.give_back(self._taken)
        self._taken = 0
        on_result, self._on_result = self._on_result, None
        if on_result is not None:
            try:
                on_result(result)
            except Exception:  # a bug in a callback must not break this connection's parser
                log.exception("upstream result callback failed")

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received = True
        # Counted as it arrives, status line and headers included: an upstream streaming an endless
        # header section would otherwise be buffered by the parser until the upstream timeout.
        self._size += len(data)
        if self._size > self._pool.max_response:
            return self._fail("too_large", f"response over {self._pool.max_response} bytes")
        if not self._pool.budget.take(len(data)):
            return self._fail("over_budget", f"answers in flight over {self._pool.budget.limit} bytes")
        self._taken += len(data)
        try:
            self._parser.feed_data(data)
        # 101: the proxy never asks to upgrade; HttpParserCallbackError: a callback below refused the response
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail("protocol", f"unparseable response: {exc!r}")

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.close()
        self._pool.forget(self)
        if self._headers_done and not self._framed:
            # A response without length or chunking ends when the connection does.
            self.on_message_complete()
        self._finish(UpstreamError("reset", "connection closed before a complete response",
                                   before_response=not self._received))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a trailer field of a chunked response: never merged into the header section (RFC 9110 §6.5.1)
        name = name.lower()
        if name == b"connection":
            self._connection_header = value
        elif name == b"content-length":
            self._framed = True
        elif name == b"transfer-encoding":
            self._framed = True
            if value.strip().lower() != b"chunked":
                # httptools decodes the chunks only: a `gzip, chunked` body would reach the client still
                # gzip-coded with nothing saying so (the header is hop-by-hop and not passed on).
                raise ValueError(f"transfer coding {value!r} (the proxy decodes only chunked)")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._parser.get_status_code() > 599:  # RFC 9110 §15: three digits, 1xx to 5xx
            raise ValueError(f"status {self._parser.get_status_code()}")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def _fail(self, kind: str, detail: str) -> None:
        """Stop reading at once (the rest of the response is never buffered) and say why."""
        self.close()
        self._finish(UpstreamError(kind, detail))

    def on_message_complete(self) -> None:
        self._headers_done = False
        if self._parser.get_status_code() < 200 and self._on_result is not None:
            # An interim response (100 Continue, 103 Early Hints): the final one follows on this connection.
            # ASGI cannot pass it on; nginx drops it too.
            self._headers, self._connection_header, self._framed = [], None, False
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        if self._on_result is None:
            self.close()  # an unsolicited or late response: the connection's state is unknown
            return
        body, self._body = b"".join(self._body), []  # an idle pooled connection keeps no answer alive
        response = UpstreamResponse(self._parser.get_status_code(), self._headers, body, self._connection_header)
        response.held, self._taken = Held(self._pool.budget, self._taken), 0
        self._finish(response)


def resolve(future: asyncio.Future, value: object) -> None:
    """Set a future's result unless it was already settled (e.g. cancelled)."""
    if not future.done():
        future.set_result(value)


def _expire(waiter: asyncio.Future, detail: str) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamError("timeout", detail))


class _Pool:
    """Connections to one origin: LIFO idle reuse, a cap on open connections, FIFO waiters."""

    def __init__(self, target: Target, limit: int, connect_timeout: float, max_response: int, budget: BufferBudget):
        self.max_response = max_response
        self.budget = budget
        # Kept: asyncio.get_running_loop() makes a getpid() system call on every use.
        self.loop = asyncio.get_running_loop()
        self._target = target
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._ssl = ssl.create_default_context() if target.scheme == "https" else None
        self._idle: list[_Connection] = []
        self._waiters: deque[asyncio.Future] = deque()
        self.open = 0
        self._retired = False

    def send(self, data: bytes, deadline: float, on_result: OnResult) -> None:
        """Common case without a coroutine: an idle keep-alive connection takes the request."""
        conn = self._idle_connection()
        if conn is None:
            self._spawn(self._exchange(data, deadline, attempts=2), on_result)
            return

        def done(result: Result) -> None:
            if isinstance(result, UpstreamError):
                conn.close()
                if _retryable(result, reused=True):
                    self._spawn(self._exchange(data, deadline, attempts=1), on_result)
                    return
            else:
                self._release(conn)
            on_result(result)

        conn.start(data, done, deadline)

    def _spawn(self, exchange: Coroutine[Any, Any, Result], on_result: OnResult) -> None:
        def done(task: asyncio.Task) -> None:
            if task.cancelled():
                on_result(UpstreamError("reset", "the proxy is shutting down"))
            elif task.exception() is not None:
                on_result(UpstreamError("protocol", f"unexpected: {task.exception()!r}"))
            else:
                on_result(task.result())

        self.loop.create_task(exchange).add_done_callback(done)

    async def _exchange(self, data: bytes, deadline: float, attempts: int) -> Result:
        """The slow path: open or wait for a connection; failures are returned, not raised."""
        loop = self.loop
        for attempt in range(1, attempts + 1):
            try:
                conn, reused = await self._acquire(loop, deadline)
            except UpstreamError as exc:
                return exc
            waiter = loop.create_future()
            conn.start(data, functools.partial(resolve, waiter), deadline)
            try:
                result = await waiter
            except BaseException:
                conn.close()
                raise
            if isinstance(result, UpstreamResponse):
                self._release(conn)
                return result
            conn.close()
            if not (_retryable(result, reused) and attempt < attempts):
                return result
        raise AssertionError("unreachable: the last attempt returns")

    def _idle_connection(self) -> Optional[_Connection]:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> tuple[_Connection, bool]:
        while True:
            conn = self._idle_connection()
            if conn is not None:
                return conn, True
            if self.open < self._limit:
                return await self._connect(loop, deadline), False
            conn = await self._wait_for_release(loop, deadline)
            if conn is not None:
                return conn, True

    async def _wait_for_release(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Optional[_Connection]:
        """Wait for a released connection (returned) or freed capacity (None)."""
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(deadline, _expire, waiter, "all connections busy")
        try:
            return await waiter
        finally:
            timer.cancel()

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        self.open += 1
        target = self._target
        remaining = deadline - loop.time()
        timeout = max(0.0, min(self._connect_timeout, remaining))
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, loop), target.host, target.port, ssl=self._ssl),
                timeout,
            )
        except asyncio.TimeoutError:
            self._closed_one()
            # A request that waited for a busy pool may have little time left: its deadline passed, which says
            # nothing about whether the upstream accepts connections (503 would send the operator to the model).
            kind = "connect" if remaining > self._connect_timeout else "timeout"
            raise UpstreamError(kind, f"no connection within {timeout:.3g} s") from None
        except OSError as exc:
            self._closed_one()
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # the proxy's own limit, not the upstream's fault
                raise UpstreamError("local", exc.strerror) from None
            raise UpstreamError("connect", exc.strerror or str(exc)) from None
        except BaseException:
            self._closed_one()
            raise
        return conn

    def _release(self, conn: _Connection) -> None:
        if not conn.reusable or self._retired:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """Called once per connection, when it closes."""
        if conn in self._idle:
            self._idle.remove(conn)
        self._closed_one()

    def _closed_one(self) -> None:
        self.open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def retire(self) -> None:
        """Close idle connections now and in-flight ones when their exchange ends."""
        self._retired = True
        for conn in list(self._idle):
            conn.close()


class UpstreamClient:
    """Pools keyed by origin; every address comes from a compiled routing-table Target."""

    def __init__(self, limit_per_upstream: int, connect_timeout: float, max_response: int, max_buffered: int = 1 << 62):
        self.max_response = max_response
        self.budget = BufferBudget(max_buffered)  # shared by every upstream's pool: memory is the worker's
        self._limit = limit_per_upstream
        self._connect_timeout = connect_timeout
        self._pools: dict[tuple[str, str, int], _Pool] = {}

    def send(self, target: Target, header_block: bytes, body: bytes, timeout: float, on_result: OnResult) -> None:
        """POST to `target`; `on_result` gets the UpstreamResponse or UpstreamError, once."""
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = self._pools[target.origin] = _Pool(target, self._limit, self._connect_timeout,
                                                      self.max_response, self.budget)
        head = b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n" % (
            target.request_target, target.host_header, len(body))
        deadline = pool.loop.time() + timeout
        pool.send(head + header_block + b"\r\n" + body, deadline, on_result)

    async def exchange(self, target: Target, header_block: bytes, body: bytes, timeout: float) -> Result:
        """`send` for coroutines: the response, or the UpstreamError that ended the exchange (returned, not
        raised: raising costs the data plane a traceback object per failed request)."""
        future = asyncio.get_running_loop().create_future()
        self.send(target, header_block, body, timeout, functools.partial(resolve, future))
        return await future

    def retain_only(self, origins: frozenset[tuple[str, str, int]]) -> None:
        """After a reload, drop idle connections to upstreams the table no longer names."""
        for origin in [o for o in self._pools if o not in origins]:
            self._pools.pop(origin).retire()

    def close(self) -> None:
        self.retain_only(frozenset())
