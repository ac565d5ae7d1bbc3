"""The pod's HTTP protocol (templates/bento/mf_protocol.py) under the lock's uvicorn, over real sockets: POST /predict
answered inside the protocol keeps HTTP/1.1 as uvicorn's ASGI path keeps it (keep-alive, pipelining in order,
HTTP/1.0 and `Connection: close`, graceful shutdown, clients that leave), and what it leaves to that path still
gets there."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import logging
import socket
import time
from typing import Any, Optional

import pytest

from pod_support import Inputs, config as pod_config, mf_fast, mf_http, mf_serve, serving

import mf_batch  # noqa: E402  (pod_support put the Bento templates on sys.path)
import mf_protocol  # noqa: E402

ROW = b'{"x": 1.5}'


class Batched:
    """As the generated service answers: the real batcher around a model doubling `x` (4 rows a run), which takes
    `delay_s` a run."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.batcher = mf_batch.Batcher(self._run, max_rows=4, budget_ms=60_000)

    def _run(self, rows: list, params: Any = None) -> list:
        time.sleep(self.delay_s)
        return [row["x"] * 2 for row in rows]

    def answer(self, rows: list, params: Any = None) -> Any:
        return self.batcher.answer(rows, params)


class Counted(mf_fast.FastPredict):
    """The pod's app, counting the requests that reached it through uvicorn's ASGI path."""

    asgi_requests = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.asgi_requests += scope["type"] == "http"
        await super().__call__(scope, receive, send)


def _app(service: Any) -> Counted:
    pod = mf_serve.Pod(lambda: service)
    pod.instance = service
    return Counted(mf_http.ErrorShape(pod, max_bytes=1 << 20), Inputs, pod.answer, max_bytes=1 << 20)


def _post(rows: int = 1, body: Optional[bytes] = None, headers: bytes = b"", version: bytes = b"1.1") -> bytes:
    body = body if body is not None else b'{"inputs": [' + b", ".join([ROW] * rows) + b"]}"
    return (b"POST /predict HTTP/" + version + b"\r\nhost: pod\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n" + headers + b"\r\n" + body)


class Client:
    """One connection, its answers read in order (bodies read) from one buffered reader."""

    def __init__(self, server: Any):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.reader = _Kept(socket.SocketIO(self.sock, "rb"))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def answers(self, count: int) -> list[http.client.HTTPResponse]:
        answers = []
        for _ in range(count):
            answer = http.client.HTTPResponse(self)  # type: ignore[arg-type]
            answer.begin()
            answer.body = answer.read()  # type: ignore[attr-defined]
            answers.append(answer)
        return answers

    def makefile(self, *args: Any, **kwargs: Any) -> io.BufferedReader:  # what HTTPResponse reads from
        return self.reader

    def closed(self) -> bool:
        try:
            return self.reader.read(1) == b""
        except ConnectionResetError:
            return True


class _Kept(io.BufferedReader):
    def close(self) -> None:  # HTTPResponse closes its file after each body: the next answer is read from it too
        pass


def test_kept_alive_answers_carry_the_headers_uvicorn_writes() -> None:
    app = _app(Batched())
    with serving(app) as server, Client(server) as sock:
        for rows in (4, 1, 4, 2, 4):  # full batches run at once, partial ones queue (the batcher's future)
            sock.send(_post(rows))
            answer, = sock.answers(1)
            assert (answer.status, json.loads(answer.body)) == (200, [3.0] * rows)
            assert answer.getheader("content-type") == "application/json"
            assert int(answer.getheader("content-length")) == len(answer.body)
            assert answer.getheader("server") == "uvicorn" and answer.getheader("date")
            assert answer.getheader("connection") is None
    assert app.asgi_requests == 0


def test_pipelined_requests_are_answered_in_order_whichever_path_answers_them() -> None:
    requests = [_post(1), b"GET /readyz HTTP/1.1\r\nhost: pod\r\n\r\n", _post(4), _post(body=b'{"inputs": []}'),
                _post(body=b'{"inputs": [{"x": 1}]}' + b" " * 70_000), _post(2)]
    app = _app(Batched(delay_s=0.01))
    with serving(app) as server, Client(server) as sock:
        sock.send(b"".join(requests))
        answers = sock.answers(len(requests))
    assert app.asgi_requests == 2  # the probe, the body over 64 KiB
    assert [(answer.status, json.loads(answer.body)) for answer in answers] == [
        (200, [3.0]), (200, "ok"), (200, [3.0] * 4),
        (400, {"error": {"code": "invalid_input", "field": "inputs",
                         "message": "inputs: List should have at least 1 item after validation, not 0"}}),
        (200, [2.0]), (200, [3.0] * 2)]


@pytest.mark.parametrize("version, headers", [(b"1.0", b""), (b"1.1", b"connection: close\r\n")])
def test_a_connection_the_client_ends_is_closed_after_its_answer(version: bytes, headers: bytes) -> None:
    with serving(_app(Batched())) as server, Client(server) as sock:
        sock.send(_post(4, headers=headers, version=version))
        answer, = sock.answers(1)
        assert (answer.status, answer.getheader("connection")) == (200, "close") and sock.closed()


def test_bodies_left_to_the_asgi_path_are_answered_there() -> None:
    """Chunked, `Expect: 100-continue`, and over 64 KiB (uvicorn pauses reading past it until the app receives)."""
    body = b'{"inputs": [{"x": 2}]}'
    chunked = (b"POST /predict HTTP/1.1\r\nhost: pod\r\ncontent-type: application/json\r\n"
               b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    large = body[:-1] + b" " * 200_000 + b"}"
    app = _app(Batched())
    with serving(app) as server, Client(server) as sock:
        sock.send(chunked + _post(body=large))
        assert [(answer.status, json.loads(answer.body)) for answer in sock.answers(2)] == [(200, [4.0])] * 2
        sock.send(_post(body=body, headers=b"expect: 100-continue\r\n")[:-len(body)])
        assert sock.sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.send(body)
        answer, = sock.answers(1)
        assert (answer.status, json.loads(answer.body)) == (200, [4.0])
    assert app.asgi_requests == 3


class Answering:
    """A service answering with whatever `given` makes of the rows."""

    def __init__(self, given: Any):
        self.given = given

    def answer(self, rows: list, params: Any = None) -> Any:
        return self.given(rows)


def _raised(rows: list) -> Any:
    raise RuntimeError("a defect")


def _failed_later(rows: list) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_exception(RuntimeError("a defect"))
    return future


async def _awaited(rows: list) -> list:
    await asyncio.sleep(0.01)
    return [row["x"] for row in rows]


INTERNAL = {"error": {"code": "internal", "field": None, "message": "the model server failed; see its log"}}


@pytest.mark.parametrize("given, expected", [
    (_raised, (500, INTERNAL, None)),
    (_failed_later, (500, INTERNAL, None)),
    (_awaited, (200, [1.5], None)),  # a coroutine: the in-process stand-ins' answers
    (lambda rows: mf_http.overloaded("the model server is overloaded", 3),
     (503, {"error": {"code": "overloaded", "field": None, "message": "the model server is overloaded"}}, "3")),
    (lambda rows: [object()], (500, INTERNAL, None)),  # outputs JSON has no form for
])
def test_what_the_service_gives_is_answered_in_the_one_error_shape(given: Any, expected: tuple) -> None:
    with serving(_app(Answering(given))) as server, Client(server) as sock:
        sock.send(_post(1))
        answer, = sock.answers(1)
        assert (answer.status, json.loads(answer.body), answer.getheader("retry-after")) == expected
        sock.send(_post(1))  # the connection still serves
        assert sock.answers(1)[0].status == expected[0]


def test_a_pending_answer_goes_out_before_a_graceful_shutdown_closes_its_connection() -> None:
    service = Batched(delay_s=0.5)
    with serving(_app(service)) as server, Client(server) as sock:
        sock.send(_post(1))
        time.sleep(0.1)  # the run is under way in the model thread
        server.should_exit = True
        answer, = sock.answers(1)
        assert (answer.status, json.loads(answer.body), answer.getheader("connection")) == (200, [3.0], "close")
        assert sock.closed()


def test_a_client_that_leaves_before_its_answer_harms_no_one(caplog: pytest.LogCaptureFixture) -> None:
    service = Batched(delay_s=0.2)
    with caplog.at_level(logging.WARNING), serving(_app(service)) as server:
        with Client(server) as leaving:
            leaving.send(_post(1))
            time.sleep(0.05)
        time.sleep(0.3)  # its answer is ready after it left
        with Client(server) as sock:
            sock.send(_post(1))
            assert sock.answers(1)[0].status == 200
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


class Transport:
    """An in-process transport that takes every write, and records whether reading is paused."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 3000) if name in ("sockname", "peername") else default


def test_a_client_that_does_not_read_its_answers_stops_the_reading_of_requests() -> None:
    """The ASGI path waits in its send while the transport's buffer is full; answering in the protocol, reading
    pauses instead, until the buffer drains."""
    import uvicorn

    async def scenario() -> Transport:
        app = _app(Answering(lambda rows: [row["x"] for row in rows]))  # answered at once, as a full batch inline
        config = pod_config(app)
        config.load()
        server_state = uvicorn.server.ServerState()
        protocol = config.http_protocol_class(config=config, server_state=server_state, app_state={})
        transport = Transport()
        protocol.connection_made(transport)
        protocol.pause_writing()  # the transport's buffer is over its high-water mark
        protocol.data_received(_post(4))
        assert b'200 OK' in transport.written[0] and not transport.reading
        protocol.resume_writing()
        assert transport.reading
        protocol.data_received(_post(4))
        assert len(transport.written) == 2 and transport.reading
        return transport

    asyncio.run(scenario())


def test_the_pod_serves_through_this_protocol() -> None:
    app = _app(Batched())
    assert issubclass(mf_serve.options(app)["http"], mf_protocol.PredictProtocol)
    assert mf_serve.options(app)["http"].fast is app
