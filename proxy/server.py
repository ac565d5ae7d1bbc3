"""The fast path: an HTTP/1.1 server protocol that uvicorn runs in place of its own (`http=`).

Why: under uvicorn's ASGI protocol the proxy spent ~110 µs of CPU per forwarded request and
reached about a quarter of nginx's throughput; uvicorn answering by itself already costs
~30 µs (FIELD_NOTES). This protocol parses with httptools and hands model requests to
`DataPlane.forward_soon` with a callback: no task, future or coroutine per request, so a model
request costs one parse, one upstream write and one client write (BENCHMARKS.md, "Proxy").

Only model routes take this path. Control endpoints (/healthz, /readyz, /metrics, docs) are
passed to the same ASGI app uvicorn loaded, through a minimal buffered ASGI call. uvicorn
still owns sockets, workers, signals, lifespan and graceful shutdown: the contract it needs
from a protocol is the constructor, `server_state.connections`/`tasks` and `shutdown()`.
Requests on one connection are answered strictly in order (pipelining is queued).
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import httptools

from proxy import errors
from proxy.dataplane import DataPlane, Headers, Reply, error_reply
from proxy.routing import CompiledRoute

log = logging.getLogger("proxy.server")

STATUS_LINES = {code: f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}\r\n".encode() for code in range(100, 600)
                if code in http.HTTPStatus._value2member_map_}
MAX_QUEUED = 16  # pipelined requests parsed ahead before reading pauses


def _status_line(status: int) -> bytes:
    return STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()


def _joined(chunks: list[bytes]) -> bytes:
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _find_data_plane(app: Any) -> DataPlane:
    """uvicorn may wrap the app in middleware (e.g. trace logging); each wrapper keeps `.app`."""
    while not isinstance(app, DataPlane):
        app = app.app
    return app


@dataclass(slots=True)
class _Request:
    method: str
    url: bytes
    headers: Headers
    started: float
    route: Optional[CompiledRoute] = None
    error: Optional[errors.ProxyError] = None
    header_map: dict[bytes, bytes] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    keep_alive: bool = True


class ProxyProtocol(asyncio.Protocol):
    def __init__(self, config: Any, server_state: Any, app_state: dict,
                 _loop: Optional[asyncio.AbstractEventLoop] = None):
        if not config.loaded:
            config.load()
        self._app = config.loaded_app
        self._plane = _find_data_plane(self._app)
        self._app_state = app_state
        self._keep_alive_timeout = config.timeout_keep_alive
        self._loop = _loop or asyncio.get_event_loop()
        self._server_state = server_state
        self._parser = httptools.HttpRequestParser(self)
        self._transport: Optional[asyncio.Transport] = None
        self._client: Optional[tuple] = None
        self._server: Optional[tuple] = None
        self._current: Optional[_Request] = None  # being parsed
        self._queue: deque[_Request] = deque()  # parsed, waiting for their turn
        self._busy = False
        self._closing = False
        self._idle_timer: Optional[asyncio.TimerHandle] = None
        self._last_active = 0.0
        self._lost = asyncio.Event()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._client = transport.get_extra_info("peername")
        self._server = transport.get_extra_info("sockname")
        self._server_state.connections.add(self)
        self._last_active = self._loop.time()
        self._idle_timer = self._loop.call_later(self._keep_alive_timeout, self._check_idle)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._server_state.connections.discard(self)
        self._closing = True
        self._queue.clear()  # nobody is left to read those answers
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._lost.set()

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._closing = True  # no upgrades here: answer what was parsed, then close
        except httptools.HttpParserError as exc:
            self._write(error_reply(errors.ProxyError(400, "bad_request", f"malformed HTTP request: {exc}")),
                        keep_alive=False)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: finish the requests already received, then close."""
        self._closing = True
        if not self._busy and not self._queue:
            self._transport.close()

    def pause_writing(self) -> None:
        self._transport.pause_reading()  # a client not reading its answers gets no new work

    def resume_writing(self) -> None:
        self._transport.resume_reading()

    # --- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._current = _Request("", b"", [], time.perf_counter())

    def on_url(self, url: bytes) -> None:
        self._current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        request = self._current
        request.method = self._parser.get_method().decode("ascii")
        request.keep_alive = self._parser.should_keep_alive()
        url = request.url
        if url[:1] == b"/" and b"?" not in url and b"%" not in url:
            path = url.decode("latin-1")  # the common origin-form case, without a full URL parse
        else:
            try:
                path = urllib.parse.unquote(httptools.parse_url(url).path.decode("latin-1"))
            except httptools.HttpParserInvalidURLError:
                path = ""  # answered as "not a model route"
        request.header_map = headers = dict(request.headers)
        if path not in self._plane.control_paths:  # control paths keep route None: ASGI answers them
            request.route, request.error = self._plane.lookup(request.method, path)
        declared = headers.get(b"content-length", b"")
        if request.error is None and declared.isdigit() and int(declared) > self._plane.max_body:
            request.error = errors.body_too_large(self._plane.max_body)
        if request.error is None and headers.get(b"expect", b"").lower() == b"100-continue":
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self._current
        request.size += len(body)
        if request.size > self._plane.max_body:
            # Chunked bodies are only caught by counting. The rest is read and dropped, so the
            # 413 goes out in order and the connection stays usable.
            if request.error is None:
                request.error = errors.body_too_large(self._plane.max_body)
            request.body.clear()
        elif request.error is None:
            request.body.append(body)

    def on_message_complete(self) -> None:
        request, self._current = self._current, None
        self._queue.append(request)
        if len(self._queue) == MAX_QUEUED:
            self._transport.pause_reading()  # resumed once the queue drains
        if not self._busy:
            self._answer_next()

    # --- answering, one request at a time, in order -------------------------------------------

    def _answer_next(self) -> None:
        if len(self._queue) == MAX_QUEUED:
            self._transport.resume_reading()
        request = self._queue.popleft()
        self._busy = True
        if request.error is not None:
            self._replied(request, self._plane.reject(request.route, request.error, request.started))
        elif request.route is not None:
            self._plane.forward_soon(request.route, request.headers, request.header_map, _joined(request.body),
                                     request.started, lambda reply: self._replied(request, reply))
        else:
            task = self._loop.create_task(self._call_asgi(request, _joined(request.body)))
            self._server_state.tasks.add(task)
            task.add_done_callback(lambda done: self._asgi_done(request, done))

    def _asgi_done(self, request: _Request, task: asyncio.Task) -> None:
        self._server_state.tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("control endpoint failed on %s", request.method, exc_info=task.exception())
            self._replied(request, error_reply(errors.ProxyError(
                500, "internal_error", "the proxy failed on this request; retry, and report it if it persists")))
        else:
            self._replied(request, task.result())

    def _replied(self, request: _Request, reply: Reply) -> None:
        self._busy = False
        self._server_state.total_requests += 1
        self._write(reply, request.keep_alive)
        self._last_active = self._loop.time()
        if self._queue and not self._transport.is_closing():
            self._answer_next()
        elif self._closing and not self._transport.is_closing():
            self._transport.close()

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        if self._transport.is_closing():
            return
        keep_alive = keep_alive and not self._closing
        self._closing = not keep_alive
        parts = [_status_line(reply.status)]
        for name, value in reply.headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(reply.body))
        parts.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        parts.append(reply.body)
        self._transport.write(b"".join(parts))
        if not keep_alive:
            self._transport.close()

    # --- control endpoints through ASGI ---------------------------------------------------------

    async def _call_asgi(self, request: _Request, body: bytes) -> Reply:
        parsed = httptools.parse_url(request.url)
        raw_path = parsed.path
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request.method, "scheme": "http", "path": urllib.parse.unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path, "query_string": parsed.query or b"", "root_path": "", "headers": request.headers,
            "client": self._client, "server": self._server, "state": self._app_state.copy(),
        }
        reply = Reply(500, [], b"")
        chunks: list[bytes] = []
        received = False

        async def receive() -> dict:
            nonlocal received
            if received:  # as in uvicorn: after the body, the next message is the disconnect
                await self._lost.wait()
                return {"type": "http.disconnect"}
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                reply.status = message["status"]
                reply.headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", [])
                                 if bytes(n).lower() != b"content-length"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self._app(scope, receive, send)
        reply.body = b"".join(chunks)
        return reply

    # --- idle connections -----------------------------------------------------------------------

    def _check_idle(self) -> None:
        """One timer per connection, re-armed lazily: cheaper than a new timer per request."""
        idle_for = self._loop.time() - self._last_active
        if self._busy or idle_for < self._keep_alive_timeout:
            delay = self._keep_alive_timeout - idle_for if not self._busy else self._keep_alive_timeout
            self._idle_timer = self._loop.call_later(max(delay, 0.01), self._check_idle)
        elif not self._transport.is_closing():
            self._transport.close()
