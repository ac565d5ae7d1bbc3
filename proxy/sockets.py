"""How long a client may leave the proxy's answer unread: TCP_USER_TIMEOUT on the listening socket.

granian hands a response to hyper whole and hyper buffers what the socket cannot take, with no write
timeout of its own, so a client that sends requests and never reads the answers held every answer in
memory for as long as it kept the connection open (measured: 40 such clients of an 8 MB answer, 715 MiB
held for as long as they stayed, over the Deployment's memory limit (then 256 MiB)). The kernel's TCP_USER_TIMEOUT
bounds how long sent bytes may stay unacknowledged, a closed receive window included (Linux ≥ 4.20), then
aborts the connection, and hyper frees what it held. Accepted connections inherit it from the listening
socket, which granian creates in each worker once the app's startup is over: the option is set as soon
as that socket exists, and on the connections it accepted before then (on a loaded machine the first
check can come late; a client that connected in between kept its answer). nginx's `send_timeout` (60 s)
bounds the same wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from typing import Callable

log = logging.getLogger("proxy.sockets")

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _tcp_sockets() -> list[socket.socket]:
    """This process's TCP sockets, each as a duplicate the caller closes."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # closed since the listing
            continue
        if sock.type == socket.SOCK_STREAM and sock.family in _TCP_FAMILIES:
            found.append(sock)
        else:
            sock.close()
    return found


def _set(sockets: list[socket.socket], which: Callable[[socket.socket], bool], milliseconds: int) -> list[tuple]:
    """Set the timeout on the sockets `which` picks; closes them all; the local addresses of those it set."""
    chosen = []
    for sock in sockets:
        with sock, contextlib.suppress(OSError):  # one closed under us is not ours to set any more
            if which(sock):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
                chosen.append(sock.getsockname())
    return chosen


def limit_unread_time(seconds: float) -> int:
    """Set the timeout on every listening TCP socket of this process, then on the connections they accepted
    before that (clients that came while the server started); returns how many listening sockets there were.
    In that order, a connection accepted at any moment either inherits the option or is found afterwards."""
    milliseconds = max(1, round(seconds * 1000))
    listening = _set(_tcp_sockets(), lambda sock: sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1,
                     milliseconds)
    if listening:
        _set(_tcp_sockets(), lambda sock: _accepted_by(sock.getsockname(), listening), milliseconds)
    return len(listening)


def _accepted_by(local: tuple, listening: list[tuple]) -> bool:
    """A connection another listener accepted has that listener's port, and its address unless the listener
    took every address (0.0.0.0, ::). The proxy's own upstream connections have ephemeral ports."""
    return any(local[1] == port and (local[0] == address or ipaddress.ip_address(address).is_unspecified)
               for address, port, *_ in listening)


def limit_unread_time_once_listening(loop: asyncio.AbstractEventLoop, seconds: float, done: Callable[[], None],
                                     interval: float = 0.01, attempts: int = 500) -> None:
    """From the worker's startup: the listening socket appears once granian's server starts (~10 ms later).
    `done` is called once the option is set, or once it is known that it cannot be (the proxy's readiness
    waits for it, so no client sent by a load balancer comes before it)."""
    if not hasattr(socket, "TCP_USER_TIMEOUT") or not os.path.isdir("/proc/self/fd"):
        log.warning("proxy: no TCP_USER_TIMEOUT here (not Linux): a client that never reads keeps its answer")
        done()
        return

    def attempt(left: int) -> None:
        if limit_unread_time(seconds):
            done()
        elif left:
            loop.call_later(interval, attempt, left - 1)
        else:
            log.warning("proxy: no listening socket found to set the send timeout on")
            done()

    loop.call_soon(attempt, attempts)
