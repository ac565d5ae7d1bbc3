"""How long a client may leave the proxy's answer unread: TCP_USER_TIMEOUT on the listening socket.

granian hands a response to hyper whole and hyper buffers what the socket cannot take, with no write
timeout of its own, so a client that sends requests and never reads the answers held every answer in
memory for as long as it kept the connection open (measured: 40 such clients of an 8 MB answer, 715 MiB
held for as long as they stayed, over the Deployment's 256 MiB limit). The kernel's TCP_USER_TIMEOUT
bounds how long sent bytes may stay unacknowledged, a closed receive window included (Linux ≥ 4.20), then
aborts the connection, and hyper frees what it held. Accepted connections inherit it from the listening
socket, which granian creates in each worker once the app's startup is over: the option is set as soon
as that socket exists. nginx's `send_timeout` (60 s) bounds the same wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("proxy.sockets")

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _listening_tcp_sockets() -> list[socket.socket]:
    """This process's listening TCP sockets, each as a duplicate the caller closes."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # closed since the listing
            continue
        if sock.type == socket.SOCK_STREAM and sock.family in _TCP_FAMILIES and \
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            found.append(sock)
        else:
            sock.close()
    return found


def limit_unread_time(seconds: float) -> int:
    """Set the timeout on every listening TCP socket of this process; returns how many there were."""
    sockets = _listening_tcp_sockets()
    for sock in sockets:
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, round(seconds * 1000)))
    return len(sockets)


def limit_unread_time_once_listening(loop: asyncio.AbstractEventLoop, seconds: float,
                                     interval: float = 0.01, attempts: int = 500) -> None:
    """From the worker's startup: the listening socket appears once granian's server starts (~10 ms later)."""
    if not hasattr(socket, "TCP_USER_TIMEOUT") or not os.path.isdir("/proc/self/fd"):
        log.warning("proxy: no TCP_USER_TIMEOUT here (not Linux): a client that never reads keeps its answer")
        return

    def attempt(left: int) -> None:
        if limit_unread_time(seconds):
            return
        if left:
            loop.call_later(interval, attempt, left - 1)
        else:
            log.warning("proxy: no listening socket found to set the send timeout on")

    loop.call_soon(attempt, attempts)
