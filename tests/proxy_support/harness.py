"""Real processes for proxy tests: upstream stand-ins and `python -m proxy`, on 127.0.0.1 only.

Every process starts in its own session so teardown can signal the whole process group, and
every wait polls against a deadline instead of sleeping a guessed amount.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_SCRIPT = Path(__file__).with_name("upstream.py")
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: Optional[bytes] = None,
            headers: Optional[dict[str, str]] = None, timeout: float = 5.0) -> Reply:
    """One request on a fresh connection; header names in the reply are lower-cased."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def _status_of(port: int, path: str) -> int:
    try:
        return request(port, "GET", path, timeout=1.0).status
    except OSError:
        return 0


@dataclass
class Process:
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    popen: Optional[subprocess.Popen] = None
    log_path: Optional[Path] = None

    def start(self) -> "Process":
        fd, name = tempfile.mkstemp(prefix="proxy-test-", suffix=".log")
        self.log_path = Path(name)
        self.popen = subprocess.Popen(self.args, cwd=REPO, env={**os.environ, **self.env}, stdout=fd,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        os.close(fd)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def send_signal(self, sig: int) -> None:
        """To the main process only, as Kubernetes and `kill` do (teardown signals the group)."""
        os.kill(self.popen.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class Upstream:
    name: str
    port: int
    process: Process

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/predict"

    def posts(self) -> int:
        return request(self.port, "GET", "/_stats").json()["posts"]

    def start(self) -> "Upstream":
        self.process = Process([sys.executable, str(UPSTREAM_SCRIPT), "--name", self.name,
                                "--port", str(self.port)]).start()
        wait_until(lambda: _status_of(self.port, "/_stats") == 200, 10, f"upstream {self.name}")
        return self


def start_upstream(name: str) -> Upstream:
    return Upstream(name, free_port(), Process([])).start()


@dataclass
class Proxy:
    port: int
    process: Process
    routes: Path

    def post(self, path: str, body: bytes = b"{}", headers: Optional[dict[str, str]] = None,
             timeout: float = 5.0) -> Reply:
        return request(self.port, "POST", path, body, {"content-type": "application/json", **(headers or {})},
                       timeout)

    def metrics(self) -> str:
        return request(self.port, "GET", "/metrics").body.decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                sample, _, value = line.rpartition(" ")
                if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                    total += float(value)
        return total


def start_proxy(routes: Path, **settings: object) -> Proxy:
    port = free_port()
    args = [sys.executable, "-m", "proxy", "--routes", str(routes), "--port", str(port), "--log-level", "info"]
    for name, value in settings.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    process = Process(args).start()
    try:
        wait_until(lambda: _status_of(port, "/readyz") == 200 or process.popen.poll() is not None, 15, "proxy")
    except AssertionError:
        process.kill()
        raise
    if process.popen.poll() is not None:
        raise AssertionError(f"proxy exited early:\n{process.log()}")
    return Proxy(port, process, routes)


def write_routes(path: Path, upstreams: dict[str, tuple[str, str]], routes: list[dict]) -> Path:
    """Write a routes.yaml atomically: upstreams maps name -> (url, model_version)."""
    table = {"format_version": 1,
             "upstreams": {n: {"url": url, "model_version": v} for n, (url, v) in upstreams.items()},
             "routes": routes}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(table, sort_keys=False))
    os.replace(tmp, path)
    return path


def plain_route(path: str, upstream: str) -> dict:
    return {"path": path, "variants": [{"name": "main", "upstream": upstream, "weight": 100}]}


def experiment_route(path: str, weights: dict[str, int], sticky: Optional[dict] = None,
                     shadows: tuple[str, ...] = ()) -> dict:
    route = {"path": path, "experiment": "exp", "variants": [
        {"name": name, "upstream": name, "weight": weight} for name, weight in weights.items()]}
    if sticky:
        route["sticky_key"] = sticky
    if shadows:
        route["shadows"] = list(shadows)
    return route
