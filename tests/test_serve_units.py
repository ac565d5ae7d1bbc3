"""factory.serve in process: the port probe agrees with the servers it starts; the CPU quota of a measured container."""

from __future__ import annotations

import socket
from fractions import Fraction

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


SERVING_SCRIPT = """
import sys, time
from pathlib import Path
from factory.serve import free_port, process_served, stop_on_sigterm

stop_on_sigterm(143)  # as `factory test` sets it up
port = free_port()
server = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
with process_served(server, Path(sys.argv[1]), Path(sys.argv[1]) / "server.log", port, "/") as served:
    print(served.process.pid, flush=True)
    time.sleep(120)
"""


def test_sigterm_stops_the_servers_a_command_started(tmp_path) -> None:
    """`timeout`, a cancelled CI job or `kill` send SIGTERM: the model servers run in sessions of their own, so
    only the command's own unwinding stops them (a killed `factory test` left its model serving)."""
    import os
    import signal
    import subprocess
    import sys

    command = subprocess.Popen([sys.executable, "-c", SERVING_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    server = int(command.stdout.readline())
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=30) == 143
    with pytest.raises(ProcessLookupError):
        os.kill(server, 0)


@pytest.mark.parametrize("cores, period_us, quota_us", [
    ("1", 10_000, 10_000), ("2", 10_000, 20_000), ("0.5", 10_000, 5_000), ("0.25", 10_000, 2_500),
    ("0.1", 10_000, 1_000),  # the kernel's shortest quota, 1 ms, in the usual period
    ("0.05", 20_000, 1_000), ("0.001", 1_000_000, 1_000),  # below it the period grows, up to 1 s
])
def test_a_measured_container_gets_its_cpu_request_as_a_short_period_quota(cores, period_us, quota_us) -> None:
    from factory.serve import cfs_quota

    assert cfs_quota(Fraction(cores)) == (period_us, quota_us)


def test_a_server_that_lost_its_port_to_another_is_not_taken_for_ready(tmp_path) -> None:
    """Two runs testing one model at once can both find its stable port free; the later server then fails to
    bind it while the earlier one answers /readyz: that answer is not this run's server."""
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from e2e_support.background import serving
    from factory.serve import process_served

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Ready)) as other:
        port = other.server_address[1]
        late = [sys.executable, "-c", "import socket, time; time.sleep(0.5); socket.socket().bind(('127.0.0.1', "
                f"{port}))"]
        with pytest.raises(ServeError, match=r"^the model server exited before it was ready: OSError: \[Errno 98\] "
                                             "Address already in use"):
            with process_served(late, tmp_path, tmp_path / "server.log", port, "/readyz"):
                pass
