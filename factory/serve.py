"""Run a built Bento on a free 127.0.0.1 port, in its own process group, always cleaned up.

Two ways, both real servers:
- "single": `python -m mf_serve` in the lean runtime venv: one process, what the Kubernetes pod runs,
  so this is what memory is measured on;
- "bentoml": `bentoml serve` (arbiter + worker), BentoML's own way.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

from factory import dockerapi
from factory.errors import ServeError
from factory.runtime import interpreter_environment
from factory.settings import child_environment

Mode = Literal["single", "bentoml"]
READY_TIMEOUT_S = 120.0
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b:?")
STOP_TIMEOUT_S = 15.0
# The CFS period of a measured container's CPU quota. Docker's and a Kubernetes limit's is 100 ms: a server
# at 250m would then run 25 ms and stall 75, a latency no pod with a CPU request and no limit (the
# manifests set none) sees; at 10 ms the stalls are as short as the scheduler's own time slices. The
# kernel's shortest quota is 1 ms, and longest period 1 s.
CFS_PERIOD_US, CFS_MIN_QUOTA_US, CFS_MAX_PERIOD_US = 10_000, 1_000, 1_000_000


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port(wanted: int = 0) -> int:
    """`wanted` if it is free on 127.0.0.1 (else a ServeError), or any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers bind: connections of a run that just ended linger in TIME_WAIT on the port (the
        # server closed them), which keeps it from a plain bind but not from a server's.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", wanted))
        except OSError as exc:
            raise ServeError(f"port {wanted} on 127.0.0.1 is in use ({exc.strerror}); pick another --port") from exc
        return probe.getsockname()[1]


def stable_port(name: str, tries: int = 64) -> int:
    """A free port below Linux's ephemeral range (32768+), the same for a model run after run.

    `factory test` serves on it, and the replay it prints after a failure names it: no outgoing
    connection is handed that port meanwhile, so the replay's `factory serve --port` finds it free."""
    first = 20000 + zlib.crc32(name.encode()) % 10000
    for port in range(first, first + tries):
        with contextlib.suppress(ServeError):
            return free_port(port)
    return free_port()


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
           ready_timeout_s: float = READY_TIMEOUT_S, port: int | None = None) -> Iterator[Served]:
    """Start the Bento, wait for /readyz, yield it; stop the whole process group on exit, whatever happens."""
    port = free_port(port or 0)
    command, cwd = serve_command(bento_tag, port, mode, runtime_python or Path(sys.executable))
    environment = interpreter_environment(Path(command[0]))
    with process_served(command, cwd, log, port, "/readyz", ready_timeout_s, environment) as server:
        yield server


@contextlib.contextmanager
def process_served(command: list[str], cwd: Path, log: Path, port: int, ready_path: str,
                   ready_timeout_s: float = READY_TIMEOUT_S, environment: Optional[dict[str, str]] = None
                   ) -> Iterator[Served]:
    """Any HTTP server process on 127.0.0.1:`port`, in its own process group, stopped on exit; `environment`
    (default: ours, writing no bytecode) says where its .pyc files go (runtime.interpreter_environment)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**(environment or {**child_environment(), "PYTHONDONTWRITEBYTECODE": "1"}), "BENTOML_DO_NOT_TRACK": "true"}
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
    wait_until_ready(server.url + path, timeout_s, lambda: server.process.poll() is None, server.log,
                     server.process.pid)


def wait_until_ready(url: str, timeout_s: float, alive: Callable[[], bool], log: Path,
                     owner: Optional[int] = None) -> None:
    """Poll `url` until it answers 200 from `owner`'s process tree (when given); fail early, with the log's
    tail, if the server dies. A model's test port is the same run after run (stable_port): two runs testing
    one model at once can both find it free, and the later one's server then fails to bind it while the
    earlier one's answers, so an answer alone would have a run measure another run's server."""
    deadline = time.monotonic() + timeout_s
    port = urllib.parse.urlsplit(url).port
    while time.monotonic() < deadline:
        if not alive():
            raise ServeError(f"the model server exited before it was ready: {last_error(log)}\n"
                             f"full serve log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and (owner is None or listens(owner, port)):
                    return
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise ServeError(f"{url} was not ready after {timeout_s:.0f} s: {last_error(log)}\nfull serve log: {log}")


def listens(pid: int, port: int) -> bool:
    """Whether `pid` or a process under it listens on `port` (True where this user may not look)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return any(connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
                   for process in [root, *root.children(recursive=True)]
                   for connection in process.net_connections("tcp"))
    except psutil.AccessDenied:
        return True
    except psutil.NoSuchProcess:
        return False


def model_command(port: int) -> list[str]:
    """What a model container runs (as its Deployment does), bound to loopback on host networking."""
    return ["python", "-m", "mf_serve", "--host", "127.0.0.1", "--port", str(port)]


class OOMKilled(ServeError):
    """The kernel killed the container at its memory limit."""


@dataclass(frozen=True)
class ServedContainer:
    url: str
    container: object


def cfs_quota(cores: Fraction) -> tuple[int, int]:
    """(period, quota) in µs giving the container `cores` CPUs (0.001 ≤ cores)."""
    period = min(CFS_MAX_PERIOD_US, max(CFS_PERIOD_US, math.ceil(CFS_MIN_QUOTA_US / cores)))
    return period, max(CFS_MIN_QUOTA_US, round(cores * period))


@contextlib.contextmanager
def container_served(image: str, log: Path, memory_limit: str, command: Callable[[int], list[str]] = model_command,
                     volumes: Optional[dict] = None, ready_timeout_s: float = READY_TIMEOUT_S,
                     port: int = 0, cpus: Optional[Fraction] = None) -> Iterator[ServedContainer]:
    """The built image, run as the Deployment runs it (one process, its memory limit, and with `cpus` the CPU
    its pod is guaranteed, as a CFS quota), on host networking bound to 127.0.0.1 only. An OOM kill at the
    limit, while starting or inside the block, raises OOMKilled."""
    from kubernetes.utils import parse_quantity

    port = free_port(port)
    try:
        container = dockerapi.run(image, command(port), int(parse_quantity(memory_limit)), volumes,
                                  cfs_quota(cpus) if cpus else None)
    except dockerapi.StepFailed as exc:
        # A registry that lost the image (wiped, garbage-collected) or an engine that may not pull from it.
        raise ServeError(f"{exc.lines[-1]}; build and push it again "
                         "(`factory build`), or check that its registry still holds it and lets this engine "
                         "pull") from exc
    served = ServedContainer(f"http://127.0.0.1:{port}", container)
    killed = OOMKilled(f"the container of {image} was OOM-killed at its memory limit {memory_limit}; its log: {log}")

    def alive() -> bool:
        container.reload()
        if container.status != "running":
            log.write_bytes(container.logs())
            if container.attrs["State"].get("OOMKilled"):
                raise killed
        return container.status in ("created", "running")

    try:
        wait_until_ready(f"{served.url}/readyz", ready_timeout_s, alive, log, container_pid(container))
        yield served
    finally:
        oom = False
        with contextlib.suppress(Exception):  # the docker SDK raises several types for a container that is gone
            log.write_bytes(container.logs())
            container.reload()
            oom = bool(container.attrs["State"].get("OOMKilled"))
        container.remove(force=True)
        if oom:
            raise killed  # the root cause of whatever the block saw (refused connections, resets)


def container_pid(container) -> Optional[int]:
    """The container's first process as this host sees it (0 from a remote engine's API: not ours to read)."""
    container.reload()
    pid = container.attrs.get("State", {}).get("Pid") or 0
    return pid if pid and Path(f"/proc/{pid}").exists() else None


def stop_on_sigterm(exit_code: int = 0) -> None:
    """SIGTERM (how a background `&` job, `timeout`, docker stop or a CI cancel stops us: a background job
    ignores Ctrl-C) unwinds like Ctrl-C, so every server and container started here is stopped too, even
    while it is still starting: they run in sessions of their own, which no signal to our group reaches."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(exit_code))


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


def last_error(log: Path) -> str:
    """The last line of the log that names an exception (else its last line): the cause, in one line."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
    except OSError:
        return "(no serve log)"
    errors = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (errors or lines or ["(empty serve log)"])[-1][:300]
