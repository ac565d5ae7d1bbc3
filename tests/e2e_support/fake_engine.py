"""A Docker engine that answers but cannot build: the Engine API on a unix socket, as far as a build needs it.

It answers the probe (`/_ping`, `/version`) and says every image exists (so the base image looks built),
then fails every build the way dockerd does: HTTP 200 and an error in the JSON progress stream.
"""

from __future__ import annotations

import json
import socketserver
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

from e2e_support.background import serving

API_VERSION = "1.41"
BUILD_OUTPUT = [{"stream": "Step 1/9 : FROM model-factory/python-base\n"},
                {"errorDetail": {"message": "no space left on device"}, "error": "no space left on device"}]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0]
        if path.endswith("/_ping"):
            self._send(200, b"OK", "text/plain")
        elif path.endswith("/version"):
            self._json(200, {"ApiVersion": API_VERSION, "Version": "20.10-fake", "MinAPIVersion": "1.12"})
        elif "/images/" in path and path.endswith("/json"):
            self._json(200, {"Id": "sha256:" + "0" * 64, "RepoDigests": [], "Size": 1})
        else:
            self._json(404, {"message": f"the fake engine has no {path}"})

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_POST(self) -> None:  # noqa: N802
        self._drain()
        self.server.requests.append(self.path.split("?")[0])
        if self.path.split("?")[0].endswith("/build"):
            self._stream(BUILD_OUTPUT)
        else:
            self._json(500, {"message": f"the fake engine refuses {self.path}"})

    def _drain(self) -> None:
        """Read the request body (a build context): fixed length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().strip() or b"0", 16):
                self.rfile.read(size + 2)
            self.rfile.readline()
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _stream(self, items: list[dict]) -> None:
        """A progress stream as dockerd sends it: chunked, one JSON object per chunk."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for item in items:
            data = json.dumps(item).encode() + b"\r\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")

    def _json(self, status: int, body: dict) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Api-Version", API_VERSION)
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"  # a unix socket's peer has no host to log

    def log_message(self, *args) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    requests: list[str]


@contextmanager
def failing_engine(socket: Path) -> Iterator[list[str]]:
    """Serve the fake engine on `socket` (DOCKER_HOST=unix://SOCKET); yields the POSTed paths it received."""
    try:
        with serving(_Server(str(socket), _Handler)) as server:
            server.requests = []
            yield server.requests
    finally:
        socket.unlink(missing_ok=True)
