"""A private package index on 127.0.0.1 that answers only with HTTP basic auth (an Artifactory or Nexus
stand-in), serving one tiny wheel no other index has: installing it proves the install came from here."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import zipfile
from pathlib import Path
from typing import Iterator

from e2e_support.background import serving

USER, TOKEN = "build-bot", "s3cr3t-T0ken-wt10"
PACKAGE, MODULE, VERSION = "mf-private-demo", "mf_private_demo", "0.1"
GREETING = "installed from the private index"


def _wheel(folder: Path) -> Path:
    info = f"{MODULE}-{VERSION}.dist-info"
    files = {f"{MODULE}.py": f"WHERE = {GREETING!r}\n".encode(),
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    wheel = folder / "files" / f"{MODULE}-{VERSION}-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def _simple_pages(folder: Path) -> None:
    wheel = _wheel(folder)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    page = folder / "simple" / PACKAGE
    page.mkdir(parents=True)
    (page / "index.html").write_text(f'<a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>\n')
    (folder / "simple" / "index.html").write_text(f'<a href="{PACKAGE}/">{PACKAGE}</a>\n')


class _Handler(http.server.SimpleHTTPRequestHandler):
    wanted = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.headers.get("Authorization") != self.wanted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def private_index(folder: Path) -> Iterator[str]:
    """Yields the index URL with its credentials, `http://build-bot:…@127.0.0.1:PORT/simple`."""
    _simple_pages(folder)
    handler = functools.partial(_Handler, directory=str(folder))
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield f"http://{USER}:{TOKEN}@127.0.0.1:{server.server_address[1]}/simple"
