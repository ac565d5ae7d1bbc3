"""The data path: what happens to a request for a model route, independent of the HTTP server.

`DataPlane` is also the ASGI application granian runs (proxy.serve). Model routes never touch
FastAPI: its routing, Request and Response objects cost 100-250 µs per request (FIELD_NOTES),
several times what forwarding costs. Control paths (/healthz, /readyz, /metrics, docs) and
lifespan events go to the FastAPI control app. Edges the server does not enforce are here:
the body limit (413 before reading a declared length), the body read timeout (408, then the
connection is closed), a body that ends early or is badly chunked (400, closed), the Host header,
the forwarding headers.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, MutableMapping, Optional, Union

from proxy import errors
from proxy.budget import Held
from proxy.deadlines import Deadlines
from proxy.errors import ProxyError
from proxy.forward import UpstreamClient, UpstreamError, UpstreamResponse
from proxy.headers import request_header_block, response_headers
from proxy.metrics import NO_VARIANT, UNKNOWN_ROUTE, ProxyMetrics
from proxy.reload import RouteStore
from proxy.routing import CompiledRoute, CompiledVariant
from proxy.settings import ProxySettings
from proxy.shadow import ShadowSender
from proxy.split import bucket_for_key, random_bucket

Scope = MutableMapping[str, object]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Reply:
    status: int
    headers: Headers  # without content-length: whoever writes the reply frames it
    body: bytes
    held: Optional[Held] = None  # the answer's bytes of the buffer budget: given back once the reply is gone


def error_reply(error: ProxyError) -> Reply:
    return Reply(error.status, [(b"content-type", b"application/json"), *error.headers], error.body())


def single_header(headers: Headers, header_map: dict[bytes, bytes], name: bytes) -> Optional[bytes]:
    """The one value of header `name` (lower-case), or None; more than one is a ValueError.

    dict(headers) keeps the last of repeated fields silently; a sticky key or forced variant read
    that way could differ from the value the upstream reads (often the first)."""
    value = header_map.get(name)
    if value is not None and len(header_map) != len(headers) and sum(n == name for n, _ in headers) > 1:
        raise ValueError(name)
    return value


def sticky_key(route: CompiledRoute, headers: Headers, header_map: dict[bytes, bytes], body: bytes) -> Optional[str]:
    """The configured assignment key of this request, or None (then the split is random)."""
    sticky = route.sticky
    if sticky is None:
        return None
    if route.sticky_header is not None:
        try:
            value = single_header(headers, header_map, route.sticky_header)
        except ValueError:
            raise errors.ambiguous_header(sticky.name, route.path) from None
        return value.decode("latin-1") if value else None
    try:
        document = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
        raise errors.invalid_json(route.path, sticky.name, str(exc)) from None
    except RecursionError:  # `[[[[...` a thousand deep: refused like any other body that is no JSON object
        raise errors.invalid_json(route.path, sticky.name, "nested too deeply") from None
    value = document.get(sticky.name) if isinstance(document, dict) else None
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def check_transfer_coding(headers: Headers) -> None:
    """The body's transfer codings, over every Transfer-Encoding field, must be `chunked` alone. granian
    refuses a final coding other than chunked (400) but decodes `gzip, chunked` or `chunked, chunked` by the
    last one only and hands the app what is left, which the proxy would forward as the plain body."""
    codings = [coding.strip().lower() for name, value in headers if name == b"transfer-encoding"
               for coding in value.split(b",")]
    if codings != [b"chunked"]:
        raise errors.unsupported_transfer_coding(", ".join(c.decode("latin-1") for c in codings))


def routed_path(scope: Scope) -> str:
    """The path routes are matched on: the server's percent-decoded path, except that an encoded slash
    (%2F) is not a segment separator (RFC 3986 §2.2): `/a%2Fb` is one segment and matches no route,
    so a front proxy that routes on the raw path cannot be bypassed through this one."""
    raw = scope.get("raw_path")
    if raw and b"%" in raw and b"%2f" in raw.lower():
        return raw.decode("latin-1")
    return scope["path"]


class DataPlane:
    def __init__(self, settings: ProxySettings, store: RouteStore, client: UpstreamClient,
                 shadows: ShadowSender, metrics: ProxyMetrics, control: ASGIApp, control_paths: frozenset[str]):
        self.control = control
        self.control_paths = control_paths
        self.store = store
        self.max_body = settings.max_body_bytes
        self._client = client
        self._shadows = shadows
        self._metrics = metrics
        self._timeout = settings.upstream_timeout_s
        self._body_deadlines = Deadlines(settings.body_timeout_s)
        self._force_name = settings.force_variant_header
        self._force_header = self._force_name.lower().encode("ascii") if self._force_name else None
        self._rng = random.Random()

    # --- the transport-independent steps -------------------------------------------------

    def lookup(self, method: str, path: str) -> tuple[Optional[CompiledRoute], Optional[ProxyError]]:
        """The route of a non-control path, and the 503/404/405 error that answers it, if any."""
        table = self.store.table
        if table is None:
            return None, errors.not_ready()
        route = table.routes.get(path)
        if route is None:
            return None, errors.not_a_route(method, path)
        if method != "POST":
            return route, errors.method_not_allowed(method, route.path)
        return route, None

    def reject(self, route: Optional[CompiledRoute], error: ProxyError, started: float) -> Reply:
        self._metrics.observe(route.path if route else UNKNOWN_ROUTE, NO_VARIANT, error.status,
                              time.perf_counter() - started)
        return error_reply(error)

    async def forward(self, route: CompiledRoute, scope: Scope, body: bytes, started: float) -> Reply:
        """Pick the variant, send, and wait for the upstream; every failure becomes a reply."""
        headers = scope["headers"]
        header_map = dict(headers)
        try:
            self._check_host(headers, header_map)
            chosen = self._choose(route, headers, header_map, body)
        except ProxyError as error:
            return self.reject(route, error, started)
        client = scope.get("client")
        header_block = request_header_block(headers, header_map.get(b"connection"),
                                            client[0].encode("latin-1") if client else None,
                                            scope["scheme"].encode("latin-1"))
        result = await self._client.exchange(chosen.target, header_block, body, self._timeout)
        return self._finish(route, chosen, header_block, body, started, result)

    def _finish(self, route: CompiledRoute, chosen: CompiledVariant, header_block: bytes, body: bytes,
                started: float, result: Union[UpstreamResponse, UpstreamError]) -> Reply:
        """Count the outcome and build the reply; shadows go out after the caller writes it."""
        if isinstance(result, UpstreamError):
            self._metrics.upstream_failure(route.path, chosen.name, result.kind)
            error = errors.upstream_failed(result.kind, route.path, chosen.name, self._timeout,
                                           self._client.max_response, self._client.budget.limit)
            self._metrics.observe(route.path, chosen.name, error.status, time.perf_counter() - started)
            return error_reply(error)
        if result.status >= 500:
            self._metrics.upstream_failure(route.path, chosen.name, "5xx")
        if route.shadows:
            # Shadow tasks first run when the loop next gets control: after the reply is written.
            self._shadows.submit(route.path, route.shadows, header_block, body)
        self._metrics.observe(route.path, chosen.name, result.status, time.perf_counter() - started)
        reply_headers = response_headers(result)
        reply_headers.extend(chosen.response_headers)
        return Reply(result.status, reply_headers, result.body, result.held)

    @staticmethod
    def _check_host(headers: Headers, header_map: dict[bytes, bytes]) -> None:
        """RFC 9112 §3.2: a request with more than one Host is answered 400. The value is never used (the
        upstream gets its own), but two readers could take different ones. A missing Host cannot be told
        from an empty one (allowed) here: granian passes both as an empty value."""
        try:
            single_header(headers, header_map, b"host")
        except ValueError:
            raise errors.duplicate_host() from None

    def _choose(self, route: CompiledRoute, headers: Headers, header_map: dict[bytes, bytes],
                body: bytes) -> CompiledVariant:
        if self._force_header is not None and self._force_header in header_map:
            try:
                name = single_header(headers, header_map, self._force_header).decode("latin-1")
            except ValueError:
                raise errors.ambiguous_header(self._force_name, route.path) from None
            forced = route.variants.get(name)
            if forced is None:
                raise errors.unknown_variant(self._force_name, name, route.path, route.variants)
            return forced
        key = sticky_key(route, headers, header_map, body)
        bucket = bucket_for_key(route.path, key) if key is not None else random_bucket(self._rng)
        return route.variants[route.split.pick(bucket)]

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.control_paths:
            return await self.control(scope, receive, send)
        started = time.perf_counter()
        route, error = self.lookup(scope["method"], routed_path(scope))
        try:
            if error is not None:
                raise error
            body, held = await self._read_body(scope["headers"], receive)  # held: until the reply is written
        except ProxyError as problem:
            reply = self.reject(route, problem, started)
        else:
            reply = await self.forward(route, scope, body, started)
        reply.headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _read_body(self, headers: Headers, receive: Receive) -> tuple[bytes, Held]:
        """The whole body within the body timeout, refused early on Content-Length and again on
        the bytes counted. Nothing is read before the Content-Length check, so a client sending
        `Expect: 100-continue` gets the 413 instead of a 100."""
        header_map = dict(headers)
        chunked = b"transfer-encoding" in header_map
        if chunked:
            check_transfer_coding(headers)
        declared = header_map.get(b"content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        if length is not None and length > self.max_body:
            raise errors.body_too_large(self.max_body)
        task = self._body_deadlines.start()
        try:
            # chunked framing wins over a Content-Length (RFC 9112 §6.3): then only the last chunk ends the body
            return await self._receive_all(receive, None if chunked else length)
        except asyncio.CancelledError:
            if self._body_deadlines.expired(task):
                raise errors.body_timeout(self._body_deadlines.timeout) from None
            raise
        finally:
            self._body_deadlines.stop(task)

    async def _receive_all(self, receive: Receive, expected: Optional[int]) -> tuple[bytes, Held]:
        """The body, up to the last message or to `expected` bytes, and its bytes of the worker's buffer budget
        (given back when `held` goes). granian hands over a Content-Length body whole but flagged `more_body`,
        then an empty last message, and every `receive()` is a round trip through its Rust and Python threads;
        not waiting for the empty one saves 9 of 47 system calls and 3 of 14 context switches per request
        (BENCHMARKS.md, "Proxy"). The server frames the body, so no byte past `expected` arrives."""
        chunks, held = [], Held(self._client.budget)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # granian says this both when the client went away and when the chunked framing is invalid
                # (a chunk size over 64 bits, a missing CRLF): answering costs nothing if the client is gone.
                raise errors.incomplete_body()
            chunk = message.get("body", b"")
            if held.size + len(chunk) > self.max_body:  # chunked uploads carry no Content-Length to check up front
                raise errors.body_too_large(self.max_body)
            if not held.take(len(chunk)):
                raise errors.buffers_full(held.budget.limit)
            chunks.append(chunk)
            if held.size == expected or not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks), held
