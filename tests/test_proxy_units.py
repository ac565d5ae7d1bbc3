"""In-process tests of the proxy's parts: table compilation, settings, headers, reloads and the
upstream client against in-process asyncio servers."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.dataplane import sticky_key
from proxy.deadlines import Deadlines
from proxy.errors import ProxyError, upstream_failed
from proxy.forward import UpstreamClient, UpstreamError, UpstreamResponse
from proxy.headers import request_header_block, response_headers
from proxy.metrics import ProxyMetrics
from proxy.reload import RouteStore, describe_error
from proxy.routing import RouteTable, compile_table, load_compiled
from proxy.settings import ProxySettings
from proxy.shadow import ShadowSender
from proxy.sockets import limit_unread_time
from tests.proxy_support.harness import REPO, experiment_route, plain_route, write_routes

UPSTREAMS = {"a": ("http://127.0.0.1:9001/predict", "1"), "b": ("https://models.internal/v2/predict", "7")}


def _table(routes: list[dict]) -> RouteTable:
    return RouteTable.model_validate({
        "upstreams": {n: {"url": u, "model_version": v} for n, (u, v) in UPSTREAMS.items()}, "routes": routes})


def test_compile_resolves_addresses_once():
    table = compile_table(_table([experiment_route("/m", {"a": 90, "b": 10}, {"source": "header", "name": "X-User"},
                                                   shadows=("b",))]))
    route = table.routes["/m"]
    a, b = route.variants["a"].target, route.variants["b"].target
    assert (a.host, a.port, a.request_target, a.host_header) == ("127.0.0.1", 9001, b"/predict", b"127.0.0.1:9001")
    assert (b.scheme, b.port, b.host_header, b.request_target) == ("https", 443, b"models.internal", b"/v2/predict")
    assert route.sticky_header == b"x-user"
    assert route.variants["b"].response_headers == ((b"x-model-variant", b"b"), (b"x-model-version", b"7"))
    assert table.origins == {("http", "127.0.0.1", 9001), ("https", "models.internal", 443)}


def test_compile_rejects_a_route_over_a_proxy_endpoint():
    with pytest.raises(ValueError, match="collides"):
        compile_table(_table([plain_route("/metrics", "a")]), frozenset({"/metrics"}))


def test_settings_flags_override_environment_which_overrides_defaults():
    env = {"PROXY_ROUTES": "/env.yaml", "PROXY_PORT": "9000", "PROXY_MAX_BODY_BYTES": "10", "PROXY_HOST": ""}
    settings = ProxySettings.from_env(env, port=9100, host=None)
    assert (settings.routes, settings.port, settings.max_body_bytes, settings.host) == (
        Path("/env.yaml"), 9100, 10, "127.0.0.1")
    assert settings.force_variant_header is None
    assert ProxySettings.from_env(settings.to_env()) == settings


def test_request_headers_drop_hop_by_hop_and_connection_listed():
    headers = [(b"connection", b"close, X-Private"), (b"x-private", b"1"), (b"host", b"evil"),
               (b"content-length", b"3"), (b"te", b"trailers"), (b"x-user", b"u")]
    block = request_header_block(headers, dict(headers).get(b"connection"), None, b"http")
    assert block == b"x-user: u\r\nx-forwarded-proto: http\r\n"


@pytest.mark.parametrize("sent, expected_for", [
    ([], b"10.0.0.9"),
    ([(b"x-forwarded-for", b"1.1.1.1")], b"1.1.1.1, 10.0.0.9"),
    ([(b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"), (b"x-forwarded-for", b"3.3.3.3")],
     b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"),
])
def test_forwarding_headers_append_the_client_and_replace_proto_and_host(sent, expected_for):
    headers = [*sent, (b"x-forwarded-host", b"evil.example"), (b"x-forwarded-proto", b"https"), (b"x-user", b"u"),
               (b"forwarded", b"for=6.6.6.6;proto=https;host=evil.example")]
    block = request_header_block(headers, None, b"10.0.0.9", b"http")
    assert block == b"x-user: u\r\nx-forwarded-for: " + expected_for + b"\r\nx-forwarded-proto: http\r\n"


@pytest.mark.parametrize("name", [b"x_forwarded_for", b"x_forwarded-host", b"transfer_encoding", b"content_length",
                                  b"forwarded", b"x_private"])
def test_underscore_spellings_of_the_proxys_own_headers_are_dropped(name):
    """A WSGI/CGI upstream reads `X_Forwarded_For` as HTTP_X_FORWARDED_FOR, the header the proxy sets itself."""
    headers = [(name, b"6.6.6.6"), (b"x_user", b"u")]
    block = request_header_block(headers, b"x-private", b"10.0.0.9", b"http")
    assert block == b"x_user: u\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n"


def test_response_headers_drop_hop_by_hop_and_spoofed_variant():
    kept = response_headers(UpstreamResponse(200, [
        (b"transfer-encoding", b"chunked"), (b"x-model-variant", b"x"), (b"content-type", b"application/json"),
        (b"server", b"uvicorn"),
        (b"content-length", b"2"), (b"connection", b"x-hop"), (b"x-hop", b"1"), (b"x_model_variant", b"spoof"),
        (b"x_hop", b"1")], b"", b"x-hop"))
    assert kept == [(b"content-type", b"application/json")]


@pytest.mark.parametrize("body, expected", [
    (b'{"user_id": "u1"}', "u1"), (b'{"user_id": 7}', "7"), (b'{"user_id": null}', None),
    (b'{"other": 1}', None), (b"[1, 2]", None), (b'{"user_id": {"b": 1, "a": 2}}', '{"a":2,"b":1}'),
])
def test_sticky_field_key(body, expected):
    route = compile_table(_table([experiment_route("/m", {"a": 50, "b": 50},
                                                   {"source": "field", "name": "user_id"})])).routes["/m"]
    assert sticky_key(route, [], {}, body) == expected


@pytest.mark.parametrize("headers, expected", [
    ([(b"x-user", b"u1")], "u1"),
    ([(b"x-user", b"\xe9\xff")], "\xe9\xff"),  # not UTF-8: read as latin-1, so the same bytes pick the same variant
    ([(b"x-other", b"1")], None),
    ([(b"x-user", b"")], None),
    ([(b"x-other", b"1"), (b"x-other", b"2"), (b"x-user", b"u1")], "u1"),  # other repeated headers do not matter
    ([(b"x-user", b"alice"), (b"x-user", b"bob")], "the request has more than one X-User header; /m reads one value "
                                                   "from it, so send it exactly once"),
])
def test_sticky_header_key(headers, expected):
    route = compile_table(_table([experiment_route("/m", {"a": 50, "b": 50},
                                                   {"source": "header", "name": "X-User"})])).routes["/m"]
    try:
        found = sticky_key(route, headers, dict(headers), b"{}")
    except ProxyError as error:
        found = error.message
        assert (error.status, error.code) == (400, "ambiguous_header")
    assert found == expected


@pytest.mark.parametrize("body, detail", [
    (b"\xff", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"user_id": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "nested too deeply"),
    (b'{"user_id": 1' + b"0" * 5_000 + b"}", "Exceeds the limit (4300 digits) for integer string conversion: value "
                                            "has 5001 digits; use sys.set_int_max_str_digits() to increase the limit"),
])
def test_sticky_field_rejects_bad_json(body, detail):
    route = compile_table(_table([experiment_route("/m", {"a": 50, "b": 50},
                                                   {"source": "field", "name": "user_id"})])).routes["/m"]
    with pytest.raises(ProxyError) as caught:
        sticky_key(route, [], {}, body)
    assert (caught.value.status, caught.value.message) == (400, f"request body is not valid JSON ({detail}); /m reads "
                                                                "the experiment key from the JSON field 'user_id', so "
                                                                "the body must be a JSON object")


def test_invalid_reload_keeps_the_old_table_logs_once_and_counts(tmp_path, caplog):
    path = write_routes(tmp_path / "routes.yaml", UPSTREAMS, [plain_route("/m", "a")])
    metrics = ProxyMetrics()
    store = RouteStore(path, metrics, frozenset())
    assert store.reload("test")
    good = store.table
    path.write_text("routes: [unterminated")
    with caplog.at_level(logging.ERROR, logger="proxy.routes"):
        assert not store.reload("test")
    assert store.table is good
    assert len(caplog.records) == 1 and "keeping the previous table" in caplog.records[0].getMessage()
    write_routes(path, UPSTREAMS, [plain_route("/m", "a"), experiment_route("/n", {"a": 60, "b": 50})])
    assert not store.reload("test")  # weights sum to 110: also rejected
    assert "/n" not in store.table.routes
    text = metrics.render().decode()
    assert 'proxy_route_reloads_total{result="error"} 2.0' in text
    assert 'proxy_route_reloads_total{result="ok"} 1.0' in text


def test_cli_refuses_to_start_on_a_bad_routes_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "proxy", "--routes", str(tmp_path / "missing.yaml")],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "proxy: cannot start:" in result.stderr and "missing.yaml" in result.stderr


# --- the upstream client against in-process servers --------------------------------------------

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def _serve(handler) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _target(port: int, **upstream: object):
    table = compile_table(RouteTable.model_validate({
        "upstreams": {"u": {"url": f"http://127.0.0.1:{port}/p", "model_version": "1", **upstream}},
        "routes": [plain_route("/m", "u")]}))
    return table.routes["/m"].variants["main"].target


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def test_a_request_dropped_unanswered_on_a_reused_connection_is_retried_once():
    async def scenario():
        seen = []

        async def answer_once_then_drop(reader, writer):
            seen.append(await _read_request(reader))
            writer.write(RESPONSE)
            await writer.drain()
            seen.append(await _read_request(reader))
            writer.close()  # the keep-alive race: the server gave up on the connection as the request came

        server, port = await _serve(answer_once_then_drop)
        client = UpstreamClient(4, 1.0, 1024)
        first = await client.exchange(_target(port), b"", b"{}", 2.0)
        second = await client.exchange(_target(port), b"x-a: 1\r\n", b"{}", 2.0)
        client.close()
        server.close()
        return first, second, seen

    first, second, seen = asyncio.run(scenario())
    assert (first.status, first.body, second.status) == (200, b"ok", 200)
    assert len(seen) == 3  # answered, dropped unanswered, retried on a new connection
    assert seen[0].startswith(b"POST /p HTTP/1.1\r\nhost: 127.0.0.1:")
    assert seen[2].endswith(b"x-a: 1\r\n\r\n{}")


def test_answers_over_the_in_flight_budget_are_dropped_and_every_byte_comes_back():
    """Three answers arriving at once against a budget of two: one is dropped (over_budget); the others hold
    their bytes for as long as the answers live; an exchange that times out mid-answer gives its bytes back."""
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 1000

    async def scenario():
        gate = asyncio.Event()

        async def in_two_parts(reader, writer):
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):  # the proxy dropped it
                while True:
                    await _read_request(reader)
                    writer.write(answer[:600])
                    await writer.drain()
                    await gate.wait()
                    writer.write(answer[600:])
                    await writer.drain()

        server, port = await _serve(in_two_parts)
        client = UpstreamClient(4, 1.0, 4096, max_buffered=2 * len(answer) + 400)
        target = _target(port)
        exchanges = [asyncio.ensure_future(client.exchange(target, b"", b"{}", 5.0)) for _ in range(3)]
        await asyncio.sleep(0.2)
        partial = client.budget.held
        gate.set()
        results = [await exchange for exchange in exchanges]
        outcomes = sorted(r.kind if isinstance(r, UpstreamError) else str(r.status) for r in results)
        while_held = client.budget.held
        gate.clear()
        alone = UpstreamClient(1, 1.0, 4096, max_buffered=len(answer))
        timed_out = await alone.exchange(target, b"", b"{}", 0.3)
        for each in (client, alone):
            each.close()
        server.close()
        return client, (partial, outcomes, while_held, timed_out.kind, alone.budget.held)

    client, seen = asyncio.run(scenario())
    assert seen == (3 * 600, ["200", "200", "over_budget"], 2 * len(answer), "timeout", 0)
    assert client.budget.held == 0  # the answers are gone, and with them their bytes


@pytest.mark.parametrize("upstream, timeout, kind", [({}, 0.1, "timeout"), ({"queue_ms": 50}, 5.0, "saturated")],
                         ids=["until-the-deadline", "past-the-queue-budget"])
def test_pool_limit_queues_requests_until_the_deadline_or_the_upstreams_queue_budget(upstream, timeout, kind):
    """A request waits for the pool's one busy connection until its deadline (a timeout, 504), or, where the
    upstream has a queue budget, only that long: past its capacity a pod's queue is the proxy's pool, where the pod
    cannot refuse it, and a request that waited longer than the model's latency budget (queue_ms) could not be
    answered within it (saturated: 503 upstream_overloaded, not a 504 seconds later)."""
    async def scenario():
        gate = asyncio.Event()

        async def slow(reader, writer):
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    await _read_request(reader)
                    await gate.wait()
                    writer.write(RESPONSE)
                    await writer.drain()

        server, port = await _serve(slow)
        client = UpstreamClient(1, 1.0, 1024)
        target = _target(port, **upstream)
        first = asyncio.ensure_future(client.exchange(target, b"", b"{}", 5.0))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        late = await client.exchange(target, b"", b"{}", timeout)  # waits for the single connection
        waited = time.perf_counter() - started
        gate.set()
        results = [await first, await client.exchange(target, b"", b"{}", 5.0)]
        client.close()
        server.close()
        return late.kind, waited, [r.status for r in results]

    refused, waited, statuses = asyncio.run(scenario())
    assert (refused, statuses) == (kind, [200, 200])
    assert 0.04 < waited < 1.0


def test_a_wait_for_a_busy_pool_that_leaves_no_time_to_connect_is_a_timeout_not_unavailable():
    """The upstream never accepts (a full backlog: SYNs are dropped) and holds the pool's one connection; the
    request waiting for it gets it back with 0.1 s left. Connecting then fails on the request's own deadline:
    before, that was "not accepting connections" (503), which sent the operator to a healthy model."""
    async def scenario():
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            client = UpstreamClient(1, 1.0, 1024)
            target = _target(listener.getsockname()[1])
            first = asyncio.ensure_future(client.exchange(target, b"", b"{}", 0.2))
            await asyncio.sleep(0.1)
            second = await client.exchange(target, b"", b"{}", 0.2)
            results = [(await first).kind, second.kind]
            client.close()
            return results

    assert asyncio.run(scenario()) == ["timeout", "timeout"]


def test_no_file_descriptor_left_is_the_proxys_own_failure():
    async def scenario():
        loop = asyncio.get_running_loop()

        async def out_of_fds(*args, **kwargs):
            raise OSError(errno.EMFILE, "Too many open files")

        loop.create_connection = out_of_fds
        client = UpstreamClient(1, 1.0, 1024)
        result = await client.exchange(_target(9), b"", b"{}", 1.0)
        client.close()
        return result.kind

    assert asyncio.run(scenario()) == "local"


def test_chunked_and_close_delimited_responses_are_read_whole():
    async def scenario(response: bytes):
        async def reply(reader, writer):
            await _read_request(reader)
            writer.write(response)
            await writer.drain()
            writer.close()

        server, port = await _serve(reply)
        client = UpstreamClient(1, 1.0, 1024)
        result = await client.exchange(_target(port), b"", b"{}", 2.0)
        client.close()
        server.close()
        return result.status, result.body

    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert asyncio.run(scenario(chunked)) == (200, b"{}")
    assert asyncio.run(scenario(b"HTTP/1.1 201 Created\r\nconnection: close\r\n\r\n[1]")) == (201, b"[1]")


@pytest.mark.parametrize("response, expected", [
    (b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n{}",
     (200, [(b"x-a", b"1"), (b"content-length", b"2")], b"{}")),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
     (201, [(b"content-length", b"0")], b"")),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;ext=1\r\n{}\r\n0\r\nset-cookie: t=1\r\nx-model-variant: t\r\n\r\n",
     (200, [(b"transfer-encoding", b"chunked")], b"{}")),
], ids=["103", "100-twice", "trailers"])
def test_interim_responses_are_skipped_and_trailers_never_become_headers(response, expected):
    async def scenario():
        async def reply(reader, writer):
            while True:
                await _read_request(reader)
                writer.write(response)
                await writer.drain()

        server, port = await _serve(reply)
        client = UpstreamClient(1, 1.0, 1024)
        results = [await client.exchange(_target(port), b"", b"{}", 2.0) for _ in range(2)]  # the connection stays usable
        client.close()
        server.close()
        return [(r.status, r.headers, r.body) for r in results]

    assert asyncio.run(scenario()) == [expected, expected]


def _failure_kind(response: bytes, max_response: int) -> str:
    """What the upstream client makes of one canned upstream answer to one request."""
    async def scenario():
        async def reply(reader, writer):
            await _read_request(reader)
            writer.write(response)
            await writer.drain()

        server, port = await _serve(reply)
        client = UpstreamClient(1, 1.0, max_response)
        result = await client.exchange(_target(port), b"", b"{}", 2.0)
        client.close()
        server.close()
        return result.kind

    return asyncio.run(scenario())


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81",
    # httptools decodes only the chunks: the client would get gzip bytes with nothing saying so
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"HTTP/1.1 600 Weird\r\ncontent-length: 2\r\n\r\n{}",  # RFC 9110 §15: status codes are 100-599
], ids=["101", "gzip-chunked", "status-600"])
def test_a_response_the_proxy_cannot_pass_on_is_a_protocol_error(response):
    assert _failure_kind(response, 1024) == "protocol"


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n" + b"x" * 2000,
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n" * 2,
    b"HTTP/1.1 200 OK\r\n" + b"x-pad: 1\r\n" * 200 + b"content-length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nx-pad: " + b"p" * 5000,  # a header line that never ends: not buffered until the timeout
], ids=["content-length", "chunked", "header-section", "endless-header"])
def test_a_response_over_the_limit_is_an_error_and_the_connection_is_dropped(response):
    assert _failure_kind(response, 1000) == "too_large"


async def _call(app, method: str, path: str, chunks: tuple[bytes, ...] = (b"{}",)) -> tuple[int, bytes, dict]:
    """One request through an ASGI app in process, its body in `chunks`: status, body and headers."""
    sent: list[dict] = []
    messages = iter([{"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
                     for index, chunk in enumerate(chunks)])

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "headers": [],
             "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), dict(sent[0].get("headers", []))


def test_a_request_body_over_the_buffer_budget_is_refused_while_it_arrives(tmp_path):
    """Request bodies count against the worker's budget as they arrive (4,096 clients x 1 MiB bodies would be
    4 GiB): the one that would cross it is a 503 with Retry-After, its connection closed; its bytes come back."""
    from proxy.app import create_app

    async def scenario():
        routes = write_routes(tmp_path / "routes.yaml", UPSTREAMS, [plain_route("/m", "a")])
        app = create_app(ProxySettings(routes=routes, reload_interval_s=0, max_response_bytes=1000,
                                       max_buffered_bytes=1000))
        async with app.control.router.lifespan_context(app.control):
            refused = await _call(app, "POST", "/m", (b"[" + b"1," * 300, b"1," * 300 + b"1]"))
            return refused, app._client.budget.held

    (status, body, headers), held = asyncio.run(scenario())
    assert (status, json.loads(body)["error"]["code"], held) == (503, "proxy_overloaded", 0)
    assert (headers[b"retry-after"], headers[b"connection"]) == (b"1", b"close")
    assert json.loads(body)["error"]["message"] == (
        "the proxy holds its limit of 1000 bytes of requests and answers in flight; retry in a moment (the operator "
        "raises PROXY_MAX_BUFFERED_BYTES with the proxy's memory limit, or adds proxy replicas)")


def test_not_ready_until_a_table_loads_and_the_send_timeout_is_set(tmp_path):
    """In process: an app whose routes file is missing serves 503 on /readyz and model routes; with a table but
    before its server listens (the send timeout goes on the listening socket), /readyz is still 503."""
    from proxy.app import create_app

    async def call(app, method: str, path: str) -> tuple[int, bytes]:
        return (await _call(app, method, path))[:2]

    async def scenario(listener: socket.socket):
        path = tmp_path / "routes.yaml"
        app = create_app(ProxySettings(routes=path, reload_interval_s=0, send_timeout_s=2))
        async with app.control.router.lifespan_context(app.control):
            before = [await call(app, "GET", "/readyz"), await call(app, "POST", "/m")]
            write_routes(path, UPSTREAMS, [plain_route("/m", "a")])
            app_store_reloaded = app.store.reload("test")
            starting = await call(app, "GET", "/readyz")
            listener.listen()  # as granian's worker does once the app's startup is over
            await asyncio.sleep(0.1)
            after = await call(app, "GET", "/readyz")
        return before, app_store_reloaded, starting, after

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        before, reloaded, starting, after = asyncio.run(scenario(listener))
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2000
    assert [status for status, _ in before] == [503, 503]
    assert b'"not_ready"' in before[0][1] and b'"not_ready"' in before[1][1]
    assert starting == (503, b'{"error": {"code": "not_ready", "message": "the proxy is still starting (setting the '
                             b'send timeout on its listening socket); retry in a moment"}}')
    assert reloaded and after == (200, b'{"status":"ready","routes":1}')


@pytest.mark.parametrize("headers, messages, read", [
    # granian flags a Content-Length body `more_body` and sends an empty last message: a round trip not waited for
    ([(b"content-length", b"7")], [(b'{"a":1}', True), (b"", False)], 1),
    ([(b"content-length", b"7")], [(b'{"a"', True), (b":1}", True), (b"", False)], 2),
    ([(b"content-length", b"0")], [(b"", False)], 1),
    ([(b"transfer-encoding", b"chunked")], [(b"{}", True), (b"", False)], 2),
    # both framings: the chunks decide where the body ends (RFC 9112 §6.3), not the length
    ([(b"transfer-encoding", b"chunked"), (b"content-length", b"2")], [(b"{}", True), (b"{}", True), (b"", False)], 3),
    ([], [(b"{}", False)], 1),
], ids=["length-whole", "length-in-parts", "length-0", "chunked", "chunked-and-length", "unframed"])
def test_the_body_is_read_up_to_its_declared_length(tmp_path, headers, messages, read):
    from proxy.app import create_app

    app = create_app(ProxySettings(routes=tmp_path / "routes.yaml", reload_interval_s=0))
    script = iter(messages)
    consumed = []

    async def receive() -> dict:
        body, more = next(script)
        consumed.append(body)
        return {"type": "http.request", "body": body, "more_body": more}

    body, _ = asyncio.run(app._read_body(headers, receive))
    assert (body, len(consumed)) == (b"".join(b for b, _ in messages), read)


SERVICE = "the model service behind /m (variant main)"


@pytest.mark.parametrize("kind, status, code, message", [
    ("connect", 503, "upstream_unavailable", f"{SERVICE} is not accepting connections; retry later"),
    ("timeout", 504, "upstream_timeout", f"{SERVICE} did not answer within 2 s; retry later or send fewer rows"),
    ("too_large", 502, "upstream_response_too_large", f"{SERVICE} answered with more than the proxy's limit of 9 bytes; "
     "send fewer rows per request (the operator can raise PROXY_MAX_RESPONSE_BYTES)"),
    ("protocol", 502, "upstream_error", f"{SERVICE} answered with a response that is not valid HTTP/1.1; retry the "
     "request"),
    ("reset", 502, "upstream_error", f"{SERVICE} closed the connection without a complete response; retry the request"),
    ("local", 503, "proxy_overloaded", f"the proxy has no free file descriptor for a connection to {SERVICE}; retry "
     "later (the operator raises the proxy's open-file limit, ulimit -n, or adds proxy replicas)"),
    ("saturated", 503, "upstream_overloaded", f"{SERVICE} is saturated: every connection to it stayed busy for longer "
     "than its latency budget (batching.max_latency_ms in models.yaml); retry in a moment (its HPA adds replicas as "
     "its CPU rises)"),
    ("over_budget", 503, "proxy_overloaded", f"the proxy holds its limit of 20 bytes of requests and answers in flight "
     f"and dropped the answer of {SERVICE}; retry in a moment (the operator raises PROXY_MAX_BUFFERED_BYTES with the "
     "proxy's memory limit, or adds proxy replicas)"),
])
def test_upstream_failures_say_what_the_upstream_did(kind, status, code, message):
    error = upstream_failed(kind, "/m", "main", 2.0, 9, 20)
    assert (error.status, error.code, error.message) == (status, code, message)
    assert error.headers == (((b"retry-after", b"1"),) if kind in ("over_budget", "saturated", "local") else ())


@pytest.mark.parametrize("flag, value, message", [
    ("max_header_bytes", "4096", "max_header_bytes: Input should be greater than or equal to 8192"),
    ("header_timeout_s", "61", "header_timeout_s: Input should be less than or equal to 60"),
    ("body_timeout_s", "0", "body_timeout_s: Input should be greater than 0"),
    ("max_response_bytes", "-1", "max_response_bytes: Input should be greater than or equal to 0"),
    ("max_buffered_bytes", "1000", "max_buffered_bytes: 1000 is below max_response_bytes "
     "(16777216): an answer the size limit allows could never be held; raise this or lower max_response_bytes"),
    ("drain_timeout_s", "0", "drain_timeout_s: Input should be greater than or equal to 1"),
    ("host", "a b", "host: 'a b' is not an IP address, such as 127.0.0.1, 0.0.0.0 or ::"),  # granian's traceback
    ("host", "localhost", "host: 'localhost' is not an IP address, such as 127.0.0.1, 0.0.0.0 or ::"),
])
def test_edge_settings_out_of_range_are_refused_by_name(flag, value, message):
    with pytest.raises(ValidationError) as caught:
        ProxySettings.from_env({"PROXY_ROUTES": "r.yaml", "PROXY_" + flag.upper(): value})
    assert describe_error(caught.value) == message


def test_deadlines_cancel_only_the_reads_still_running_and_not_other_cancellations():
    deadlines = Deadlines(0.2)

    async def read(start_after: float, lasts: float) -> str:
        await asyncio.sleep(start_after)
        task = deadlines.start()
        try:
            await asyncio.sleep(lasts)
            return "done"
        except asyncio.CancelledError:
            if deadlines.expired(task):
                return "timed out"
            raise
        finally:
            deadlines.stop(task)

    async def scenario() -> list:
        outside = asyncio.ensure_future(read(0, 30))
        reads = [read(0, 30), read(0.1, 0.01), read(0.1, 30), read(0.15, 0.01), read(0.3, 30)]
        await asyncio.sleep(0.05)
        outside.cancel()  # cancelled by someone else before its deadline: not a timeout
        return [*await asyncio.gather(*reads), *await asyncio.gather(outside, return_exceptions=True)]

    results = asyncio.run(scenario())
    assert results[:5] == ["timed out", "done", "timed out", "done", "timed out"]
    assert isinstance(results[5], asyncio.CancelledError)


# --- a hostile routing table: one line naming the file, the place in it and what is wrong -----------

GOOD_UPSTREAM = "upstreams:\n  a: {url: 'http://127.0.0.1:9/predict', model_version: '1'}\n"
ROUTE = "routes:\n  - {path: /m, variants: [{name: a, upstream: a, weight: 100}]}\n"
TABLE_CASES = [
    ("nested past libyaml's safe depth (it crashed the interpreter)", "x: " + "[" * 100_000 + "]" * 100_000,
     "{path}: nested deeper than 200 levels at line 1"),
    ("a duplicate upstream (the second won, unseen)",
     GOOD_UPSTREAM + "  a: {url: 'http://elsewhere:9/x', model_version: '1'}\n" + ROUTE,
     "{path}:3:3: duplicate key 'a'"),
    ("a duplicate top-level key", GOOD_UPSTREAM + ROUTE + "routes: []\n", "{path}:5:1: duplicate key 'routes'"),
    ("a python tag", GOOD_UPSTREAM + "routes: !!python/object/apply:os.system ['id']\n",
     "{path}:3:9: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("two documents", GOOD_UPSTREAM + ROUTE + "---\n" + GOOD_UPSTREAM + ROUTE,
     "{path}: expected one YAML document, found 2"),
    ("an empty file", "", "{path}: expected one YAML document, found 0"),
    ("a port out of range", GOOD_UPSTREAM.replace(":9/", ":99999/") + ROUTE,
     "{path}: upstreams.a: the port of 'http://127.0.0.1:99999/predict' is not in 1..65535"),
    ("port 0", GOOD_UPSTREAM.replace(":9/", ":0/") + ROUTE,
     "{path}: upstreams.a: the port of 'http://127.0.0.1:0/predict' is not in 1..65535"),
    ("CR/LF in an upstream URL", GOOD_UPSTREAM.replace("predict'", 'predict\\r\\nX-Injected: 1"').replace(
        "url: 'http", 'url: "http') + ROUTE, "{path}: upstreams.a.url: must be http(s)://host[:port][/path] with no user, "
                                    "query or fragment (got 'http://127.0.0.1:9/predict\\r\\nX-Injected: 1')"),
    ("a weight as a string", GOOD_UPSTREAM + ROUTE.replace("weight: 100", "weight: '100'"),
     "{path}: routes[0].variants[0].weight: Input should be a valid integer; routes[0].variants: Tuple should have "
     "at least 1 item after validation, not 0"),
    ("a weight as a boolean", GOOD_UPSTREAM + ROUTE.replace("weight: 100}", "weight: true}, {name: b, upstream: a, "
                                                                             "weight: 99}"),
     "{path}: routes[0].variants[0].weight: Input should be a valid integer"),
    ("a path with ..", GOOD_UPSTREAM + ROUTE.replace("/m,", "/m/../x,"),
     "{path}: routes[0].path: must be /segment[/segment...], each segment a letter or digit then letters, digits, "
     "'.', '_', '-' (got '/m/../x')"),
    ("a path over a proxy endpoint", GOOD_UPSTREAM + ROUTE.replace("/m,", "/readyz,"),
     "{path}: route /readyz collides with the proxy's own endpoint of that path"),
]


@pytest.mark.parametrize("label, text, message", TABLE_CASES, ids=[case[0] for case in TABLE_CASES])
def test_a_hostile_routing_table_is_one_line_naming_the_file(tmp_path, label, text, message):
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        load_compiled(path)
    assert describe_error(caught.value) == message.format(path=path)


@pytest.mark.parametrize("kind, message", [("fifo", "not a regular file"), ("directory", "no *.yaml routing table "
                                                                                            "shards in this directory")])
def test_a_routes_path_that_is_no_file_is_refused_without_reading(tmp_path, kind, message):
    path = tmp_path / "routes.yaml"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()  # reading a FIFO would block until a writer comes
    with pytest.raises(ValueError) as caught:
        load_compiled(path)
    assert str(caught.value) in (f"{path}: cannot read ({message})", f"{path}: {message}")


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])
def test_the_send_timeout_is_set_on_listeners_and_what_they_accepted_before_only(address):
    """A client that connected before the option was set (a loaded machine's slow startup) gets it too; the
    process's own outgoing connections (the proxy's upstream pool) and unconnected sockets do not."""
    with contextlib.ExitStack() as stack:
        listener, other, client = (stack.enter_context(socket.socket()) for _ in range(3))
        listener.bind((address, 0))
        listener.listen()
        other.bind(("127.0.0.1", 0))
        client.connect(("127.0.0.1", listener.getsockname()[1]))
        accepted = stack.enter_context(listener.accept()[0])
        assert limit_unread_time(1.5) >= 1
        timeouts = [sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                    for sock in (listener, accepted, client, other)]
        assert timeouts == [1500, 1500, 0, 0]


class _HeldCopies:
    """An upstream client whose copies stay in flight until the test finishes them."""

    def __init__(self, budget: int):
        from proxy.budget import BufferBudget

        self.budget = BufferBudget(budget)
        self.in_flight: list = []

    def send(self, target, header_block, body, timeout, done) -> None:
        self.in_flight.append(done)


def test_shadow_copies_hold_their_body_in_the_buffer_budget_until_the_last_is_done(tmp_path):
    client, metrics = _HeldCopies(budget=100), ProxyMetrics()
    table = load_compiled(write_routes(tmp_path / "routes.yaml", UPSTREAMS, [plain_route("/m", "a")]))
    targets = (table.routes["/m"].variants["main"].target,) * 2
    shadows = ShadowSender(client, metrics, limit=64, timeout=1.0)

    async def scenario():
        shadows.submit("/m", targets, b"", b"x" * 60)
        await asyncio.sleep(0)
        held_while_in_flight = client.budget.held
        shadows.submit("/m", targets, b"", b"y" * 60)  # 120 bytes would cross the budget of 100: not copied
        await asyncio.sleep(0)
        first, second = client.in_flight
        first(UpstreamResponse(200, [], b"ok"))
        held_after_one = client.budget.held
        second(UpstreamResponse(200, [], b"ok"))
        return held_while_in_flight, held_after_one

    assert asyncio.run(scenario()) == (60, 60)
    client.in_flight.clear()  # the copies' callbacks, the last references to the body's bytes
    assert client.budget.held == 0
    text = metrics.render().decode()
    assert 'proxy_shadow_requests_total{outcome="over_budget",route="/m",upstream="a"} 2.0' in text
    assert 'proxy_shadow_requests_total{outcome="2xx",route="/m",upstream="a"} 2.0' in text
