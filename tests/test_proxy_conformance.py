"""HTTP/1.1 edges, tried as a hostile client would: exact bytes over raw sockets to a real
`python -m proxy` (granian) in front of a real upstream process.

Which layer answers each edge is in proxy/serve.py's docstring: the server (431, header
timeout, HEAD, 100-continue, pipelining, framing) or the app (413, 408 on the body, 502 on a
large upstream response, forwarding headers).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.proxy_support.fixtures import make_proxy, upstreams  # noqa: F401 (pytest fixtures)
from tests.proxy_support.harness import (Proxy, experiment_route, plain_route, start_proxy, wait_until,
                                         write_routes)
from tests.proxy_support.rawhttp import EOF_MARK, TIMEOUT_MARK, connect, exchange, post, read_until_quiet

MAX_BODY = 4096
MAX_RESPONSE = 2048
GOOD = post("/m", b'{"n": 1}')


@pytest.fixture(scope="module")
def proxy(upstreams, tmp_path_factory) -> Proxy:  # noqa: F811
    routes = write_routes(tmp_path_factory.mktemp("routes") / "routes.yaml",
                          {"a": (upstreams["a"].url, "1")},
                          [plain_route("/m", "a"), plain_route("/p/2", "a"),
                           experiment_route("/exp", {"a": 100}, {"source": "header", "name": "X-User"})])
    started = start_proxy(routes, max_body_bytes=MAX_BODY, max_response_bytes=MAX_RESPONSE,
                          header_timeout_s=1, body_timeout_s=1)
    yield started
    started.process.stop()


@pytest.fixture
def posts(upstreams):  # noqa: F811
    """How many POSTs the upstream received since the test started."""
    before = upstreams["a"].posts()
    return lambda: upstreams["a"].posts() - before


def test_head_never_carries_a_body_and_keeps_the_connection_framed(proxy):
    raw = b"HEAD /m HTTP/1.1\r\nHost: proxy.test\r\n\r\n" + GOOD
    head, after = exchange(proxy.port, raw).responses(head_only=frozenset({0}))
    assert (head.status, head.headers["allow"], head.body) == (405, "POST", b"")
    assert int(head.headers["content-length"]) > 0  # the length a GET would have had, no bytes
    assert after.status == 200 and after.json()["body"] == '{"n": 1}'


@pytest.mark.parametrize("expect", [(), ("Expect: 100-continue",)], ids=["plain", "expect-100"])
def test_declared_body_over_the_limit_is_413_before_it_is_read(proxy, posts, expect):
    head = post("/m", b"", *expect).replace(b"Content-Length: 0", b"Content-Length: 1073741824")
    result = exchange(proxy.port, head)  # the body is never sent
    [reply] = result.responses()
    assert reply.status == 413 and reply.json()["error"]["code"] == "body_too_large"
    assert b"100 Continue" not in result.raw
    assert result.ended_by == EOF_MARK and posts() == 0


def test_expect_100_on_an_unknown_route_is_404_without_100(proxy):
    result = exchange(proxy.port, post("/nope", b"", "Expect: 100-continue").replace(
        b"Content-Length: 0", b"Content-Length: 10"))
    assert b"100 Continue" not in result.raw
    assert [r.status for r in result.responses()] == [404]


def test_expect_100_within_the_limit_gets_100_then_the_answer(proxy):
    body = b'{"e": 1}'
    with connect(proxy.port) as sock:
        sock.sendall(post("/m", body, "Expect: 100-continue")[:-len(body)])
        interim = read_until_quiet(sock, 1.0, expect=1)
        assert interim.raw.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        [reply] = read_until_quiet(sock, 1.0, expect=1).responses()
    assert reply.status == 200 and reply.json()["body"] == body.decode()


def test_100_continue_is_not_written_before_earlier_pipelined_answers(proxy):
    second = post("/m", b"{}", "Expect: 100-continue")[:-2]
    raw = exchange(proxy.port, GOOD + second).raw
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.index(b"200 OK") < raw.index(b"100 Continue")


@pytest.mark.parametrize("size, forwarded", [(15_000, True), (17_000, False)])
def test_header_section_over_16_kib_is_431(proxy, posts, size, forwarded):
    pads = [f"X-Pad-{i}: " + "p" * (size // 4) for i in range(4)]  # each field under the upstream's own limit
    [reply] = exchange(proxy.port, post("/m", b"{}", *pads), expect=1).responses()
    # Forwarded, the echo of those headers is over MAX_RESPONSE: 502 shows it reached the upstream.
    assert reply.status == (502 if forwarded else 431)
    assert posts() == forwarded


@pytest.mark.parametrize("count, status", [(90, 200), (101, 431)])
def test_more_than_100_header_fields_is_431(proxy, posts, count, status):
    fields = [f"X-F{i}: v" for i in range(count - 2)]  # plus Host and Content-Length
    result = exchange(proxy.port, post("/m", b"{}", *fields), expect=1)
    assert [r.status for r in result.responses()] == [status]
    assert posts() == (status == 200)


def test_a_header_section_that_never_finishes_is_closed(proxy, posts):
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /m HTTP/1.1\r\nHost: proxy.test\r\n")
        result = read_until_quiet(sock, quiet=5.0)
    assert result.ended_by == EOF_MARK and posts() == 0


def test_an_idle_keep_alive_connection_is_closed(proxy):
    with connect(proxy.port) as sock:
        sock.sendall(GOOD)
        assert read_until_quiet(sock, 5.0, expect=1).responses()[0].status == 200
        assert read_until_quiet(sock, quiet=5.0).ended_by == EOF_MARK


def test_a_body_that_stops_arriving_is_408_and_closed(proxy, posts):
    result = exchange(proxy.port, post("/m", b"").replace(b"Content-Length: 0", b"Content-Length: 50") + b'{"a"',
                      quiet=5.0)
    [reply] = result.responses()
    assert (reply.status, reply.headers["connection"]) == (408, "close")
    assert reply.json() == {"error": {"code": "body_timeout", "message":
                            "the request body did not arrive within 1 s; send the whole body at once "
                            "(the operator can raise PROXY_BODY_TIMEOUT_S)"}}
    assert result.ended_by == EOF_MARK and posts() == 0


def test_upstream_response_over_the_limit_is_502_json(proxy):
    [reply] = exchange(proxy.port, post("/m", b"x" * MAX_RESPONSE), expect=1).responses()
    assert reply.status == 502
    assert reply.json() == {"error": {"code": "upstream_response_too_large", "message":
                            f"the model service behind /m (variant main) answered with more than the proxy's "
                            f"limit of {MAX_RESPONSE} bytes; send fewer rows per request (the operator can "
                            "raise PROXY_MAX_RESPONSE_BYTES)"}}
    assert proxy.metric("proxy_upstream_failures_total", route="/m", kind="too_large") >= 1


def test_garbage_after_a_good_request_does_not_lose_its_answer(proxy, posts):
    result = exchange(proxy.port, GOOD + b"\x00\x01 NOT HTTP AT ALL\r\n\r\n")
    good, bad = result.responses()
    assert good.status == 200 and good.json()["body"] == '{"n": 1}'
    assert bad.status == 400 and result.ended_by == EOF_MARK
    assert posts() == 1


def test_chunked_body_is_forwarded_whole(proxy):
    raw = (b"POST /m HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\n{\"c\":\r\n3\r\n 1}\r\n0\r\n\r\n")
    [reply] = exchange(proxy.port, raw, expect=1).responses()
    assert reply.status == 200 and reply.json()["body"] == '{"c": 1}'
    assert reply.json()["headers"]["Content-Length"] == "8"


def test_chunked_body_over_the_limit_is_413(proxy, posts):
    chunk = b"%x\r\n" % 3000 + b"y" * 3000 + b"\r\n"
    raw = b"POST /m HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n"
    [reply] = exchange(proxy.port, raw, expect=1).responses()
    assert reply.status == 413 and posts() == 0


def test_pipelined_requests_are_answered_in_order(proxy):
    raw = (post("/m", b'{"i": 1}') + b"GET /healthz HTTP/1.1\r\nHost: proxy.test\r\n\r\n" + post("/m", b'{"i": 3}')
           + post("/nope", b"{}"))
    replies = exchange(proxy.port, raw, expect=4).responses()
    assert [r.status for r in replies] == [200, 200, 200, 404]
    assert [replies[0].json()["body"], replies[1].json(), replies[2].json()["body"]] == [
        '{"i": 1}', {"status": "ok"}, '{"i": 3}']


def test_http_1_0_gets_an_answer_and_a_close(proxy):
    result = exchange(proxy.port, b"POST /m HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
    [reply] = result.responses()
    assert (reply.version, reply.status) == ("HTTP/1.0", 200) and result.ended_by == EOF_MARK


def test_content_length_with_transfer_encoding_is_framed_by_chunks_and_closed(proxy, posts):
    """RFC 9112 §6.3: Transfer-Encoding wins, and the connection closes after the answer, so
    what Content-Length would have framed as a second request is never run (no smuggling)."""
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
    raw = (b"POST /m HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"2\r\n{}\r\n0\r\n\r\n" + smuggled)
    result = exchange(proxy.port, raw)
    [reply] = result.responses()
    assert reply.status == 200 and reply.json()["body"] == "{}"
    assert result.ended_by == EOF_MARK and posts() == 1


def test_conflicting_content_lengths_are_400(proxy, posts):
    result = exchange(proxy.port, post("/m", b"{}x", "Content-Length: 2"))
    assert [r.status for r in result.responses()] == [400]
    assert result.ended_by == EOF_MARK and posts() == 0


def test_absolute_form_target_routes_by_path_and_never_picks_the_host(proxy, upstreams):  # noqa: F811
    raw = post("http://evil.example:9/m", b"{}")
    [reply] = exchange(proxy.port, raw, expect=1).responses()
    assert reply.status == 200
    assert reply.json()["upstream"] == "a" and reply.json()["headers"]["Host"] == f"127.0.0.1:{upstreams['a'].port}"


def test_forwarding_headers(proxy):
    raw = post("/m", b"{}", "X-Forwarded-For: 203.0.113.7", "X-Forwarded-Host: evil.example",
               "X-Forwarded-Proto: https")
    [reply] = exchange(proxy.port, raw, expect=1).responses()
    sent = reply.json()["headers"]
    assert sent["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert sent["X-Forwarded-Proto"] == "http"
    assert "X-Forwarded-Host" not in sent


def test_the_connection_stays_usable_after_each_answer(proxy):
    """Keep-alive: the same socket carries requests one after another, each answered whole."""
    with connect(proxy.port) as sock:
        for i in range(5):
            sock.sendall(post("/m", b'{"k": %d}' % i))
            [reply] = read_until_quiet(sock, 5.0, expect=1).responses()
            assert reply.json()["body"] == '{"k": %d}' % i
        assert read_until_quiet(sock, 0.2).ended_by == TIMEOUT_MARK


@pytest.mark.parametrize("chunks", [b"ffffffffffffffffff\r\n{}\r\n0\r\n\r\n", b"-2\r\n{}\r\n0\r\n\r\n",
                                    b"2\r\n{}XX0\r\n\r\n", b"2\n{}\n0\n\n"],
                         ids=["size-over-64-bits", "negative-size", "no-crlf-after-data", "bare-lf"])
def test_badly_chunked_body_is_400_json_and_closed(proxy, posts, chunks):
    """granian reports broken chunked framing to the app as a disconnect; without an answer it wrote a
    text/plain 500 of its own."""
    raw = b"POST /m HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    result = exchange(proxy.port, raw)
    [reply] = result.responses()
    assert (reply.status, reply.headers["connection"]) == (400, "close")
    assert reply.json() == {"error": {"code": "incomplete_body", "message":
                            "the request body ended before it was complete, or its chunked framing is invalid; "
                            "send the whole body, framed by a Content-Length or by valid chunks"}}
    assert result.ended_by == EOF_MARK and posts() == 0


def test_chunk_extensions_and_trailers_are_accepted_and_the_connection_stays_framed(proxy):
    raw = (b"POST /m HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n"
           b'2;name=val;q="x"\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n' + GOOD)
    first, second = exchange(proxy.port, raw, expect=2).responses()
    assert (first.status, first.json()["body"], second.status) == (200, "{}", 200)
    assert "X-Trailer" not in first.json()["headers"]


def test_two_host_headers_are_400(proxy, posts):
    """RFC 9112 §3.2. (A missing Host reaches the app as an empty one, which is allowed: both are forwarded.)"""
    [reply] = exchange(proxy.port, post("/m", b"{}", "Host: other.test"), expect=1).responses()
    assert reply.status == 400 and reply.json()["error"] == {"code": "duplicate_host", "message":
                                                            "the request has more than one Host header; send one "
                                                            "(any value: the proxy sets the upstream's own)"}
    assert posts() == 0


def test_two_sticky_key_headers_are_400_not_a_silent_pick(proxy, posts):
    [reply] = exchange(proxy.port, post("/exp", b"{}", "X-User: alice", "X-User: bob"), expect=1).responses()
    assert reply.status == 400 and reply.json()["error"] == {"code": "ambiguous_header", "message":
                                                            "the request has more than one X-User header; /exp reads "
                                                            "one value from it, so send it exactly once"}
    assert posts() == 0


@pytest.mark.parametrize("target, status", [
    ("/p/2", 200), ("/p/%32", 200), ("/%70/2?q=1", 200),  # percent-encoded unreserved characters are the same path
    ("/p%2F2", 404), ("/p%2f2", 404),  # an encoded slash is not a separator (RFC 3986 §2.2)
    ("/x/../m", 404), ("/./m", 404), ("/m/", 404), ("//m", 404),  # no normalisation: routes match exactly
])
def test_route_paths_match_exactly_after_percent_decoding(proxy, target, status):
    [reply] = exchange(proxy.port, post(target, b"{}"), expect=1).responses()
    assert reply.status == status
    if status == 200:
        assert reply.json()["path"] == "/predict"  # neither the client's path nor its query reach the upstream


def test_connect_and_asterisk_targets_are_404_json(proxy):
    raw = b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
    connect_reply, star = exchange(proxy.port, raw, expect=2).responses()
    assert (connect_reply.status, star.status) == (404, 404)
    assert connect_reply.json()["error"]["message"].startswith("CONNECT (a target without a path) is not a model route")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_head_on_control_endpoints_is_200_without_a_body(proxy, path):
    raw = f"HEAD {path} HTTP/1.1\r\nHost: proxy.test\r\n\r\n".encode() + GOOD
    head, after = exchange(proxy.port, raw, expect=2, head_only=frozenset({0})).responses(head_only=frozenset({0}))
    assert (head.status, head.body, after.status) == (200, b"", 200)


@pytest.mark.parametrize("fields", [["gzip, chunked"], ["chunked, chunked"], ["identity", "chunked"]],
                         ids=["gzip-chunked", "chunked-twice", "two-fields"])
def test_a_transfer_coding_other_than_chunked_is_501_json_and_closed(proxy, posts, fields):
    """granian frames these by the final `chunked` and hands over what is left: gzip bytes, or a body still
    chunk-framed, which would reach the model as if it were the plain body."""
    tes = "".join(f"Transfer-Encoding: {value}\r\n" for value in fields).encode()
    raw = b"POST /m HTTP/1.1\r\nHost: proxy.test\r\n" + tes + b"\r\n7\r\n2\r\n{}\r\n\r\n0\r\n\r\n" + GOOD
    result = exchange(proxy.port, raw)
    [reply] = result.responses()
    assert (reply.status, reply.headers["connection"]) == (501, "close")
    assert reply.json()["error"] == {"code": "unsupported_transfer_coding", "message":
                                     f"the request's Transfer-Encoding is {', '.join(fields)!r}; the proxy decodes "
                                     "only 'chunked' (once): send the body uncompressed, with a Content-Length or "
                                     "as 'Transfer-Encoding: chunked'"}
    assert result.ended_by == EOF_MARK and posts() == 0


def test_underscore_spellings_of_forwarding_headers_never_reach_the_upstream(proxy):
    raw = post("/m", b"{}", "X_Forwarded_For: 6.6.6.6", "X_Forwarded_Host: evil.example", "Transfer_Encoding: chunked",
               "X_Kept: yes")
    [reply] = exchange(proxy.port, raw, expect=1).responses()
    sent = {name.lower(): value for name, value in reply.json()["headers"].items()}
    assert (sent["x-forwarded-for"], sent["x_kept"]) == ("127.0.0.1", "yes")
    assert not {"x_forwarded_for", "x_forwarded_host", "transfer_encoding"} & set(sent)


def _established(local_port: int, remote_port: int) -> bool:
    """Whether the kernel still has this TCP connection open on the proxy's side (/proc/net/tcp, IPv4)."""
    wanted = f":{local_port:04X} 0100007F:{remote_port:04X} 01 "
    return wanted in Path("/proc/net/tcp").read_text()


def test_a_client_that_never_reads_its_answer_is_disconnected(upstreams, make_proxy, tmp_path):  # noqa: F811
    """Without a send timeout granian kept the answer (and the connection) for as long as the client stayed."""
    routes = write_routes(tmp_path / "routes.yaml", {"a": (upstreams["a"].url, "1")}, [plain_route("/m", "a")])
    proxy = make_proxy(routes, send_timeout_s=1, max_body_bytes=4 << 20, max_response_bytes=8 << 20)
    body = b'"' + b"x" * (2 << 20) + b'"'  # echoed back: a 2 MiB answer
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small receive window
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(post("/m", body))
        # The proxy's unacknowledged bytes time out after 1 s, at its next zero-window probe; nothing is sent then.
        wait_until(lambda: not _established(proxy.port, sock.getsockname()[1]), 10, "the proxy to drop the connection")
        received, ended = 0, None
        sock.settimeout(5)
        while ended is None:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                ended = "reset"
            else:
                received += len(chunk)
                ended = None if chunk else "eof"
    assert ended in ("reset", "eof") and received < len(body)
