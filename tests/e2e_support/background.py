"""A test's own server (HTTP on 127.0.0.1, or a Unix socket) answering from a thread for a `with` block."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from typing import Iterator, TypeVar

Server = TypeVar("Server", bound=socketserver.BaseServer)


@contextlib.contextmanager
def serving(server: Server) -> Iterator[Server]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
