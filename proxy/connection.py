"""One keep-alive HTTP/1.1 connection to an upstream, its response parsed with httptools, and what an
exchange on it ends with (an UpstreamResponse or an UpstreamError).

Split from proxy.forward (the pools and the client that own these connections): the connection speaks
the protocol and counts bytes; the pool decides which request goes on which connection and for how long
a request may wait for one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

import httptools

from proxy.budget import Held

if TYPE_CHECKING:  # the pool owns its connections; a connection only reports back to it
    from proxy.forward import UpstreamPool

log = logging.getLogger("proxy.connection")


class UpstreamError(Exception):
    """A failed exchange. kind: connect | timeout | reset | protocol | too_large | local | over_budget | saturated
    (a metric label; local: the proxy itself is out of file descriptors; over_budget: of answer bytes,
    proxy.budget; saturated: every connection stayed busy past the upstream's queue_ms)."""

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


class UpstreamConnection(asyncio.Protocol):
    """One upstream connection carrying at most one exchange at a time. Completion is a plain callback, not a
    future: on the hot path that saves a task wake-up and a coroutine resumption per request, which cost more
    than the rest of the forwarding."""

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop):
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
        self._held = Held(pool.budget)  # this exchange's bytes: the answer takes them, a failure drops them
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
        self._held = Held(self._pool.budget)
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
        if not self._held.take(len(data)):
            return self._fail("over_budget", f"answers in flight over {self._pool.budget.limit} bytes")
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
        self._finish(UpstreamResponse(self._parser.get_status_code(), self._headers, body, self._connection_header,
                                      self._held))
