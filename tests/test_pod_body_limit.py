"""A body over the pod's limit gets its 413 (templates/bento/mf_http.py `refuse_too_large`, on both of the pod's paths:
mf_fast's POST /predict and mf_http.ErrorShape for everything else). The rest of the body is read and dropped
before the 413 goes out: a server that closes a connection with request bytes unread is reset by the kernel, and
the reset destroyed the 413 before a client sending `Connection: close` read it (stranger sweep A, B3). The pod's
answers that need no body (404, 405, 415, the probes) read it first too: a 900 KB POST to a wrong path with
`Connection: close` got a reset instead of its 404 1-2 times in 10 (session 16)."""

from __future__ import annotations

import asyncio
import http.client
from typing import Union

import pytest

from pod_support import Service, mf_fast, mf_http, mf_serve, pod_app, serving

LIMIT = 1000


def _app(limit: int = LIMIT) -> mf_fast.FastPredict:
    pod = mf_serve.Pod(Service)
    pod.instance = Service()
    return pod_app(pod, max_bytes=limit)


def _asked(path: str, chunks: list[bytes], declared: bool = True, expect: bool = False,
           content_type: bytes = b"application/json", method: str = "POST", limit: int = LIMIT) -> tuple[list, int, dict]:
    """One request through the pod's app: what happened in order (("read", bytes) per body message, ("answer",
    status) at the response's start), how many bytes it read, and the response's headers."""
    headers = [(b"content-type", content_type)]
    headers += [(b"content-length", str(sum(map(len, chunks))).encode())] if declared else []
    headers += [(b"expect", b"100-continue")] if expect else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    events: list[tuple[str, int]] = []
    start: dict = {}

    async def receive() -> dict:
        index = sum(1 for kind, _ in events if kind == "read")
        events.append(("read", len(chunks[index])))
        return {"type": "http.request", "body": chunks[index], "more_body": index + 1 < len(chunks)}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            events.append(("answer", message["status"]))

    asyncio.run(_app(limit)(scope, receive, send))
    return events, sum(size for kind, size in events if kind == "read"), dict(start["headers"])


@pytest.mark.parametrize("path, content_type, declared", [
    ("/predict", b"application/json", True), ("/predict", b"application/json", False),  # mf_fast's
    ("/predict", b"text/plain", True), ("/elsewhere", b"application/json", True),  # ErrorShape's
])
def test_a_body_over_the_limit_is_read_to_its_end_before_its_413(path: str, content_type: bytes,
                                                                 declared: bool) -> None:
    events, read, headers = _asked(path, [b"x" * 600] * 5, declared=declared, content_type=content_type)
    assert events[-1] == ("answer", 413) and read == 3000 and b"connection" not in headers


def test_a_body_declared_past_the_drain_bound_is_answered_at_once_and_the_connection_closed() -> None:
    huge = b"x" * (1 << 20)
    events, read, headers = _asked("/predict", [huge] * 17)
    assert events == [("answer", 413)] and headers[b"connection"] == b"close"


def test_a_streamed_body_is_read_no_further_than_the_drain_bound() -> None:
    huge = b"x" * (1 << 20)
    events, read, headers = _asked("/predict", [huge] * 40, declared=False)
    assert events[-1] == ("answer", 413) and headers[b"connection"] == b"close"
    assert mf_http.DRAIN_BYTES < read <= mf_http.DRAIN_BYTES + len(huge)


@pytest.mark.parametrize("path", ["/predict", "/elsewhere"])
def test_a_client_waiting_to_be_told_to_continue_is_answered_without_being_asked_for_its_body(path: str) -> None:
    """Reading would send `100 Continue` and make the client send what is refused anyway (curl does so past 1 MiB)."""
    events, read, headers = _asked(path, [b"x" * 600] * 5, expect=True)
    assert events == [("answer", 413)] and headers[b"connection"] == b"close"


@pytest.fixture(scope="module")
def served_port():
    """The pod's app under uvicorn, as mf_serve runs it, on a free port."""
    with serving(_app()) as server:
        yield server.port


def _post(port: int, path: str, body: bytes, close: bool, content_type: str = "application/json") -> Union[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type,
                                                             **({"Connection": "close"} if close else {})})
        return connection.getresponse().status
    except OSError as exc:  # what the reset showed: BrokenPipeError, ConnectionResetError
        return type(exc).__name__
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/predict", "/elsewhere"])
@pytest.mark.parametrize("close", [True, False])
def test_a_client_sending_too_large_a_body_reads_its_413_over_a_real_socket(served_port: int, path: str,
                                                                             close: bool) -> None:
    big = b'{"inputs": [{"x": 1}], "pad": "' + b"x" * (2 << 20) + b'"}'
    assert [_post(served_port, path, big, close) for _ in range(10)] == [413] * 10
    assert _post(served_port, "/predict", b'{"inputs": [{"x": 1.5}]}', close) == 200


@pytest.mark.parametrize("method, path, content_type, status", [
    ("POST", "/elsewhere", b"application/json", 404), ("POST", "/predict", b"text/plain", 415),
    ("POST", "/readyz", b"application/json", 405), ("PUT", "/predict", b"application/json", 405),
])
def test_an_answer_that_needs_no_body_goes_out_once_the_body_is_read(method: str, path: str, content_type: bytes,
                                                                     status: int) -> None:
    """As the 413's: unread, the body would make the kernel reset the connection over the answer."""
    events, read, headers = _asked(path, [b"x" * 300] * 3, content_type=content_type, method=method)
    assert events[-1] == ("answer", status) and read == 900 and b"connection" not in headers


def test_an_answer_that_needs_no_body_closes_the_connection_over_a_body_it_would_not_read() -> None:
    huge = b"x" * (1 << 20)
    for chunks, declared, expect, most in (([huge] * 17, True, False, 0),  # declared past the bound: not read
                                           ([huge] * 40, False, False, mf_http.DRAIN_BYTES + len(huge)),  # streamed
                                           ([huge], True, True, 0)):  # held back until told to continue
        events, read, headers = _asked("/elsewhere", chunks, declared=declared, expect=expect, limit=64 << 20)
        assert events[-1] == ("answer", 404) and headers[b"connection"] == b"close"
        assert read <= most and (read > mf_http.DRAIN_BYTES or most == 0)


@pytest.mark.parametrize("path, content_type", [("/elsewhere", "application/json"), ("/predict", "text/plain")])
def test_a_client_sending_a_body_to_a_wrong_path_reads_its_answer_over_a_real_socket(served_port: int, path: str,
                                                                                      content_type: str) -> None:
    statuses = [_post(served_port, path, b"x" * LIMIT, True, content_type) for _ in range(10)]
    assert statuses == [404 if path == "/elsewhere" else 415] * 10
