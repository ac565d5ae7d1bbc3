"""Run the proxy's ASGI app on granian, with the HTTP edges enforced by the server itself.

granian (hyper underneath) answers these before the app sees a request: header sections over
`max_header_bytes` or with more than 100 fields → 431; a header section not complete within
`header_timeout_s` (also an idle keep-alive connection) → connection closed without an answer (hyper
never sends 408; README "The proxy" says why that stays); HEAD responses
without a body; `Expect: 100-continue` answered only when the app reads the body (so an early
413 or 404 never sends 100); pipelined requests answered in order; Content-Length together with
Transfer-Encoding framed by the chunked body and the connection closed after the answer.
Body read timeouts, body and upstream response limits are the app's (proxy.dataplane).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from pathlib import Path
from typing import Any

from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server import MPServer
from prometheus_client.multiprocess import mark_process_dead

from proxy.app import create_app
from proxy.metrics import MULTIPROC_ENV, prepare_multiprocess
from proxy.settings import ProxySettings

log = logging.getLogger("proxy.serve")


class _Server(MPServer):
    def _respawn_workers(self, workers: list[int], *args: Any, **kwargs: Any) -> None:
        """A worker that died (OOM-killed, crashed) is replaced; its counters stay in the shared metrics
        files, as prometheus_client's multiprocess mode documents, and its live gauges are dropped.
        Workers that exited cleanly were stopped by a signal sent to the whole process group (Ctrl-C,
        `kill -- -PGID`): the proxy stops as asked instead of starting new ones."""
        if all(self.wrks[idx].inner.exitcode == 0 for idx in workers):
            self.signal_handler_interrupt()
            return
        dead = [self.wrks[idx].inner.pid for idx in workers]
        super()._respawn_workers(workers, *args, **kwargs)
        if MULTIPROC_ENV in os.environ:
            for pid in dead:
                mark_process_dead(pid)

    def signal_handler_reload(self, *args: Any, **kwargs: Any) -> None:
        """SIGHUP re-reads the routes file in every worker, keeping each one's table if the file
        is bad; granian's own SIGHUP would respawn the workers, which then start without a table."""
        for worker in self.wrks:
            if worker.inner.pid is not None:
                os.kill(worker.inner.pid, signal.SIGHUP)


def _log_config(level: str) -> dict:
    return {"loggers": {"_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
                        "proxy": {"handlers": ["console"], "level": level.upper(), "propagate": False}}}


def batch_scheduling() -> None:
    """SCHED_BATCH for this thread and every thread and process it starts later (they inherit it).

    granian reads HTTP on a Rust thread, enters Python on a second thread and runs the app on the
    event-loop thread, so each request wakes one of them from another several times. Under the
    normal policy a woken thread preempts the running one when they share a core, and the GIL
    hands control straight back: 17 context switches per request at 4 connections (uvicorn: 1) and
    most of granian's extra CPU. SCHED_BATCH only turns that wake-up preemption off; CPU shares and
    nice value stay as they were, and no privilege is needed."""
    if not hasattr(os, "SCHED_BATCH"):  # not Linux: no such policy, nothing to change
        return
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:  # e.g. a seccomp profile that forbids it: run as before
        log.warning("proxy: cannot set SCHED_BATCH (%s); running with the normal policy", exc)


def serve(settings: ProxySettings, metrics_dir: Path) -> None:
    """Blocks until SIGTERM/SIGINT and the drain that follows; workers fork from this process."""
    prepare_multiprocess(metrics_dir if settings.workers > 1 else None)
    if settings.cpu_scheduling == "batch":
        batch_scheduling()
    server = _Server(
        "proxy", address=settings.host, port=settings.port, interface=Interfaces.ASGI, workers=settings.workers,
        loop=Loops.uvloop, http=HTTPModes.http1, websockets=False,
        http1_settings=HTTP1Settings(header_read_timeout=max(1, round(settings.header_timeout_s * 1000)),
                                     max_buffer_size=settings.max_header_bytes),
        log_level=LogLevels(settings.log_level), log_dictconfig=_log_config(settings.log_level),
        log_access=False,  # /metrics counts every request; an access log costs more CPU than forwarding
        workers_kill_timeout=settings.drain_timeout_s,
        backpressure=settings.max_client_connections,  # granian counts open connections against it, idle ones too
        # One dead worker no longer stops the others; one that dies again within 5.5 s of its respawn
        # (a crash loop) still ends the proxy, and Kubernetes restarts the container.
        respawn_failed_workers=True,
    )
    server.serve(target_loader=functools.partial(create_app, settings), wrap_loader=False)
