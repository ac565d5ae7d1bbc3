"""200 slow connections held against a real proxy: normal requests are still answered, and the
slow ones are cut off by the read timeouts (header section: closed; body, framed by Content-Length
or chunked: 408, then closed). Latency under this attack is measured in bench/slowloris.py, not asserted here."""

from __future__ import annotations

import asyncio
import resource
import socket

from tests.proxy_support.fixtures import make_proxy, upstreams  # noqa: F401 (pytest fixtures)
from tests.proxy_support.harness import plain_route, write_routes
from tests.proxy_support.slowloris import HOST, slow_client

SLOW = 200
NORMAL = 50
TIMEOUT_S = 4
KINDS = ("head", "body", "head", "chunked")  # half slow header sections, half slow bodies of both framings


async def _normal_request(port: int) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"POST /m HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def test_slow_clients_do_not_starve_normal_ones_and_are_cut_off(tmp_path, make_proxy, upstreams):  # noqa: F811
    routes = write_routes(tmp_path / "routes.yaml", {"a": (upstreams["a"].url, "1")}, [plain_route("/m", "a")])
    proxy = make_proxy(routes, header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S)

    async def scenario():
        opened = [asyncio.Event() for _ in range(SLOW)]
        slow = [asyncio.create_task(slow_client(proxy.port, KINDS[i % len(KINDS)], 0.5, 20, opened[i]))
                for i in range(SLOW)]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in opened)), 20)
        normal = [await _normal_request(proxy.port) for _ in range(NORMAL)]
        still_open = sum(not task.done() for task in slow)
        return normal, still_open, await asyncio.gather(*slow)

    normal, still_open, slow = asyncio.run(scenario())
    assert all(answer.startswith(b"HTTP/1.1 200 OK\r\n") for answer in normal)
    assert still_open > 0  # the normal requests were answered while slow connections were held
    heads = [r for r in slow if r.kind == "head"]
    bodies = [r for r in slow if r.kind != "head"]
    assert all(r.closed and r.answer == b"" for r in heads)
    assert all(r.closed and r.answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for r in bodies)
    assert proxy.metric("proxy_requests_total", route="/m", status="408") == len(bodies)
    assert upstreams["a"].posts() >= NORMAL


IDLE = 1100  # over granian's default backpressure (1024 per worker), which also counts idle connections


def test_idle_connections_over_granians_default_cap_do_not_lock_new_clients_out(tmp_path, make_proxy,
                                                                                  upstreams):  # noqa: F811
    """Before --max-client-connections, the 1,025th open connection was not accepted until an idle one hit the header
    timeout (10 s here): 1,100 connections that send nothing locked every new client out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * IDLE:  # this process and the proxy it starts each hold one descriptor per connection
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * IDLE), hard))
    routes = write_routes(tmp_path / "routes.yaml", {"a": (upstreams["a"].url, "1")}, [plain_route("/m", "a")])
    proxy = make_proxy(routes, header_timeout_s=10)
    idle = []
    try:
        for _ in range(IDLE):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((HOST, proxy.port))
            idle.append(sock)
        answer = asyncio.run(asyncio.wait_for(_normal_request(proxy.port), 3))  # would wait for the 10 s timeout
    finally:
        for sock in idle:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
