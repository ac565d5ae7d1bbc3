"""Run a built Bento on a free 127.0.0.1 port, in its own process group, always cleaned up.

Two ways, both real servers:
- "single": `python -m mf_serve` in the lean runtime venv: one process, what the Kubernetes pod runs,
  so this is what memory is measured on;
- "bentoml": `bentoml serve` (arbiter + worker), BentoML's own way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from factory.errors import ServeError

Mode = Literal["single", "bentoml"]
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bento_source(bento_tag: str) -> Path:
    import bentoml

    return Path(bentoml.get(bento_tag).path) / "src"


def serve_command(bento_tag: str, port: int, mode: Mode, runtime_python: Path) -> tuple[list[str], Path]:
    if mode == "single":
        return ([str(runtime_python), "-m", "mf_serve", "--host", "127.0.0.1", "--port", str(port)],
                bento_source(bento_tag))
    return ([sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)],
            Path.cwd())


@contextlib.contextmanager
def served(bento_tag: str, log: Path, mode: Mode = "single", runtime_python: Path | None = None,
           ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[Served]:
    """Start the Bento, wait for /readyz, yield it; stop the whole process group on exit, whatever happens."""
    port = free_port()
    command, cwd = serve_command(bento_tag, port, mode, runtime_python or Path(sys.executable))
    with process_served(command, cwd, log, port, "/readyz", ready_timeout_s) as server:
        yield server


@contextlib.contextmanager
def process_served(command: list[str], cwd: Path, log: Path, port: int, ready_path: str,
                   ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[Served]:
    """Any HTTP server process on 127.0.0.1:`port`, in its own process group, stopped on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PYTHONDONTWRITEBYTECODE": "1"}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    server = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(server, ready_timeout_s, ready_path)
        yield server
    finally:
        stop(process)


def wait_ready(server: Served, timeout_s: float, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServeError(f"the model server exited with code {server.process.returncode} before it was "
                             f"ready; its log ({server.log}) ends with:\n{_tail(server.log)}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise ServeError(f"the model server at {server.url} was not ready after {timeout_s:.0f} s; "
                     f"its log ({server.log}) ends with:\n{_tail(server.log)}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left: no server outlives its test."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_S)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
