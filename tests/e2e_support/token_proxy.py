"""A reverse proxy on 127.0.0.1 that lets a request through to an MLflow server only with the right bearer token
(`Authorization: Bearer …`, what MLflow sends for MLFLOW_TRACKING_TOKEN), as an authenticating gateway in front of a
company's tracking server does; anything else gets a 401 without reaching the server."""

from __future__ import annotations

import contextlib
import http.client
import http.server
from typing import Iterator
from urllib.parse import urlsplit

from e2e_support.background import serving

TOKEN = "tok-3a9f-registry-gateway"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "authorization", "content-length"}


class _Gateway(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = ("127.0.0.1", 0)

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(401, {"Content-Type": "text/plain"}, b"missing or wrong bearer token")
            return
        connection = http.client.HTTPConnection(*self.upstream, timeout=120)
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        connection.request(self.command, self.path, body=body, headers=headers)
        answer = connection.getresponse()
        payload = answer.read()
        connection.close()
        self._reply(answer.status, {name: value for name, value in answer.getheaders()
                                    if name.lower() not in HOP_BY_HOP}, payload)

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def token_gateway(upstream_url: str) -> Iterator[str]:
    """Yields the gateway's URL, `http://127.0.0.1:PORT`, in front of `upstream_url`."""
    parts = urlsplit(upstream_url)
    handler = type("Gateway", (_Gateway,), {"upstream": (parts.hostname, parts.port)})
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"
