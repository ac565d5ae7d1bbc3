"""The load generator's HTTP client (factory/load_client.py) against servers that answer right and wrong, over real
sockets on 127.0.0.1: every request is counted once, as its status or as what went wrong."""

from __future__ import annotations

import itertools
import socket
import socketserver
import time
from typing import Iterator, Optional

import pytest
import uvloop

from e2e_support.background import serving
from factory.load_client import Pool, request_bytes
from factory.loadgen import LoadResult

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n[1.0]"
SHED_BODY = b'{"error": {"code": "overloaded", "message": "busy", "field": null}}'
SHED = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n%s" % (len(SHED_BODY), SHED_BODY)
CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[1\r\n3\r\n.0]\r\n0\r\n\r\n"


class _Raw(socketserver.BaseRequestHandler):
    """Reads requests and answers each with the server's `answer` bytes (after `delay_s`); `close` ends the
    connection after the first answer, `hang_up_after` closes it unanswered under the request after that many."""

    def handle(self) -> None:
        self.server.opened += 1
        try:
            self._answer_each()
        finally:
            self.server.closed += 1

    def _answer_each(self) -> None:
        buffered = b""
        for answered in itertools.count():
            while b"\r\n\r\n" not in buffered:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                buffered += chunk
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(buffered) < length:
                buffered += self.request.recv(65536)
            buffered = buffered[length:]
            if answered == self.server.hang_up_after:
                self.server.hung_up += 1
                return
            time.sleep(self.server.delay_s)
            self.request.sendall(self.server.answer)
            if self.server.close:
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: bytes, delay_s: float = 0.0, close: bool = False,
                 hang_up_after: Optional[int] = None) -> None:
        super().__init__(("127.0.0.1", 0), _Raw)
        self.answer, self.delay_s, self.close, self.hang_up_after = answer, delay_s, close, hang_up_after
        self.opened = self.closed = self.hung_up = 0


def _load(port: int, requests: int, limit: int = 4, timeout_s: float = 5.0) -> LoadResult:
    async def run() -> LoadResult:
        result = LoadResult()
        pool = Pool("127.0.0.1", port, limit, result, timeout_s)
        for _ in range(requests):
            pool.submit(request_bytes("127.0.0.1", port, b"{}"), time.perf_counter())
        await pool.drained()
        return result

    return uvloop.run(run())


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


@pytest.mark.parametrize("answer, close, statuses, malformed", [
    (OK, False, {"200": 6}, 0),
    (CHUNKED, False, {"200": 6}, 0),
    (SHED, False, {"503": 6}, 0),
    (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy", False, {"503": 6}, 6),
    # The server closes after each answer, and says so: the next request opens another connection.
    (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\n[1.0]", True, {"200": 6}, 0),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n[1.0]", True, {"IncompleteReadError": 6}, 0),
    (b"HTTP/1.1 200 OK\r\n\r\n[1.0]", True, {"ValueError": 6}, 0),  # framed only by the connection's end
    (b"SSH-2.0-OpenSSH\r\n\r\n", True, {"ValueError": 6}, 0),
])
def test_every_request_is_counted_once_as_its_status_or_what_went_wrong(answer: bytes, close: bool, statuses: dict,
                                                                        malformed: int) -> None:
    with serving(_Server(answer, close=close)) as server:
        load = _load(server.server_address[1], 6)
    assert load.statuses == statuses and len(load.latencies_ms) == 6
    assert load.malformed_sheds == malformed


def test_an_answer_that_does_not_come_is_a_timeout_and_its_connection_is_not_reused() -> None:
    with serving(_Server(OK, delay_s=1.0)) as server:
        load = _load(server.server_address[1], 3, limit=1, timeout_s=0.2)
    assert load.statuses == {"TimeoutError": 3} and load.connections == 3
    # One at a time, each given up at 200 ms (the server would answer at 1 s), the later ones' wait counted.
    waited = sorted(load.latencies_ms)
    assert waited[0] < 900 and all(latency >= 190 * (index + 1) for index, latency in enumerate(waited))


@pytest.mark.parametrize("limit", [1, 4])
def test_a_request_on_a_reused_connection_the_server_closed_unanswered_is_sent_again(limit: int) -> None:
    """The race a keep-alive timeout makes: the server closes an idle connection as the next request goes out on
    it. The request never reached the model (nothing came back), so it is not the server's failure."""
    with serving(_Server(OK, hang_up_after=1)) as server:
        load = _load(server.server_address[1], 12, limit=limit)
    assert load.statuses == {"200": 12} and len(load.latencies_ms) == 12
    assert server.hung_up >= 1 and load.connections == server.opened


def test_a_new_connection_closed_under_its_first_request_is_counted_not_sent_again() -> None:
    """Sent again only on a reused connection: on a new one nothing suggests the request did not reach the model."""
    with serving(_Server(OK, hang_up_after=0)) as server:
        load = _load(server.server_address[1], 6, limit=1)
    assert load.statuses == {"IncompleteReadError": 6} and load.connections == 6 == server.hung_up


def test_a_refused_connection_is_counted_under_its_error(free_port: int) -> None:
    load = _load(free_port, 3)
    assert load.statuses == {"ConnectionRefusedError": 3}


def test_requests_beyond_the_pool_wait_for_a_connection_and_count_the_wait() -> None:
    with serving(_Server(OK, delay_s=0.05)) as server:
        load = _load(server.server_address[1], 6, limit=2)
    assert load.statuses == {"200": 6} and load.connections == 2 == server.opened
    # Two at a time, 50 ms each: the last pair waited for two answers before its own.
    assert max(load.latencies_ms) >= 140


def test_a_drained_pool_has_closed_its_connections() -> None:
    """Closed by the client: a server whose keep-alive connections are still open when it stops closes them itself,
    and its TIME_WAIT then keeps its port from being bound again for a minute."""
    with serving(_Server(OK, delay_s=0.01)) as server:
        _load(server.server_address[1], 8, limit=4)
        deadline = time.monotonic() + 2
        while server.closed < server.opened and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.opened == 4 == server.closed
