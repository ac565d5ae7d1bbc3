"""The two GitLab REST endpoints `factory fetch-artifacts` reads, served on 127.0.0.1 from job folders.

No GitLab runs here. Under gitlab-ci-local the folders are the artifacts it stored
(`<state>/artifacts/<job>/`); `erase` makes one answer as an expired artifact does on GitLab: the job
is still listed as successful, its artifacts download gives 404.
"""

from __future__ import annotations

import io
import json
import re
import threading
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

TOKEN = "glpat-test-token"
JOBS = re.compile(r"/api/v4/projects/[^/]+/pipelines/[0-9]+/jobs")
ARTIFACTS = re.compile(r"/api/v4/projects/[^/]+/jobs/([0-9]+)/artifacts")


class GitLabArtifactsApi:
    def __init__(self, root: Path):
        self.root = root
        self.erased: set[str] = set()
        self.downloads: list[str] = []
        self._server: Optional[ThreadingHTTPServer] = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def erase(self, job: str) -> None:
        import shutil

        shutil.rmtree(self.root / job)
        self.erased.add(job)

    def jobs(self) -> dict[int, str]:
        names = {path.name for path in self.root.iterdir() if path.is_dir()} if self.root.is_dir() else set()
        return {zlib.crc32(name.encode()): name for name in names | self.erased}

    def __enter__(self) -> "GitLabArtifactsApi":
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.headers.get("PRIVATE-TOKEN") != TOKEN:
                    return self._send(401, b'{"message": "401 Unauthorized"}')
                path = self.path.split("?")[0]
                if JOBS.fullmatch(path):
                    page = int(re.search(r"[?&]page=([0-9]+)", self.path).group(1))
                    listed = [{"id": job_id, "name": name, "status": "success"}
                              for job_id, name in sorted(api.jobs().items())]
                    return self._send(200, json.dumps(listed[(page - 1) * 100:page * 100]).encode())
                match = ARTIFACTS.fullmatch(path)
                name = api.jobs().get(int(match.group(1))) if match else None
                if name is None or name in api.erased:
                    return self._send(404, b'{"message": "404 Not found"}')
                api.downloads.append(name)
                return self._send(200, _zip(api.root / name))

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()
