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
import ssl
from collections import deque
from typing import Any, Coroutine, Optional

from proxy.budget import BufferBudget
from proxy.connection import OnResult, Result, UpstreamConnection, UpstreamError, UpstreamResponse
from proxy.routing import Target

__all__ = ["Result", "UpstreamClient", "UpstreamError", "UpstreamResponse"]  # the connection's, re-exported


def _retryable(result: Result, reused: bool) -> bool:
    """A pooled connection the upstream closed while idle fails before any byte comes back:
    the request never reached the model, so sending it once more is safe."""
    return isinstance(result, UpstreamError) and result.kind == "reset" and result.before_response and reused


def resolve(future: asyncio.Future, value: object) -> None:
    """Set a future's result unless it was already settled (e.g. cancelled)."""
    if not future.done():
        future.set_result(value)


def _expire(waiter: asyncio.Future, kind: str, detail: str) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamError(kind, detail))


class UpstreamPool:
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
        self._idle: list[UpstreamConnection] = []
        self._waiters: deque[asyncio.Future] = deque()
        self.open = 0
        self._retired = False

    def send(self, data: bytes, deadline: float, queued_until: float, on_result: OnResult) -> None:
        """Common case without a coroutine: an idle keep-alive connection takes the request. Otherwise it may
        wait for one until `queued_until` (at most `deadline`)."""
        conn = self._idle_connection()
        if conn is None:
            self._spawn(self._exchange(data, deadline, queued_until, attempts=2), on_result)
            return

        def done(result: Result) -> None:
            if isinstance(result, UpstreamError):
                conn.close()
                if _retryable(result, reused=True):
                    self._spawn(self._exchange(data, deadline, queued_until, attempts=1), on_result)
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

    async def _exchange(self, data: bytes, deadline: float, queued_until: float, attempts: int) -> Result:
        """The slow path: open or wait for a connection; failures are returned, not raised."""
        loop = self.loop
        for attempt in range(1, attempts + 1):
            try:
                conn, reused = await self._acquire(loop, deadline, queued_until)
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

    def _idle_connection(self) -> Optional[UpstreamConnection]:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float,
                       queued_until: float) -> tuple[UpstreamConnection, bool]:
        while True:
            conn = self._idle_connection()
            if conn is not None:
                return conn, True
            if self.open < self._limit:
                return await self._connect(loop, deadline), False
            kind = "saturated" if queued_until < deadline else "timeout"
            conn = await self._wait_for_release(loop, queued_until, kind)
            if conn is not None:
                return conn, True

    async def _wait_for_release(self, loop: asyncio.AbstractEventLoop, until: float,
                                kind: str) -> Optional[UpstreamConnection]:
        """Wait for a released connection (returned) or freed capacity (None); past `until`, UpstreamError(kind)."""
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(until, _expire, waiter, kind, "all connections busy")
        try:
            return await waiter
        finally:
            timer.cancel()

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> UpstreamConnection:
        self.open += 1
        target = self._target
        remaining = deadline - loop.time()
        timeout = max(0.0, min(self._connect_timeout, remaining))
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self, loop), target.host, target.port, ssl=self._ssl),
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

    def _release(self, conn: UpstreamConnection) -> None:
        if not conn.reusable or self._retired:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
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
        self._pools: dict[tuple[str, str, int], UpstreamPool] = {}

    def send(self, target: Target, header_block: bytes, body: bytes, timeout: float, on_result: OnResult) -> None:
        """POST to `target`; `on_result` gets the UpstreamResponse or UpstreamError, once."""
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = self._pools[target.origin] = UpstreamPool(target, self._limit, self._connect_timeout,
                                                      self.max_response, self.budget)
        head = b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n" % (
            target.request_target, target.host_header, len(body))
        now = pool.loop.time()
        deadline = now + timeout
        queued_until = min(deadline, now + target.queue_s) if target.queue_s else deadline
        pool.send(head + header_block + b"\r\n" + body, deadline, queued_until, on_result)

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
