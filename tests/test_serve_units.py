"""factory.serve in process: the port probe agrees with the servers it starts."""

from __future__ import annotations

import socket

import pytest

from factory.errors import ServeError
from factory.serve import free_port


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn, granian and nginx bind
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free_again() -> None:
    """`factory serve --port P` replays a failing run on the port it used; the server of that run
    closed its connections first, so they linger in TIME_WAIT on P for a minute."""
    listener = _listener()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()
    client.recv(1)  # the server's FIN
    client.close()
    listener.close()
    with pytest.raises(OSError):
        socket.socket().bind(("127.0.0.1", port))  # a plain bind still refuses it
    assert free_port(port) == port


def test_a_port_someone_listens_on_is_in_use() -> None:
    with _listener() as listener:
        port = listener.getsockname()[1]
        with pytest.raises(ServeError, match=rf"^port {port} on 127.0.0.1 is in use \(Address already in use\); "
                                             "pick another --port$"):
            free_port(port)
