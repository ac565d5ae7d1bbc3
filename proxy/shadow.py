"""Shadow traffic: fire-and-forget copies whose outcomes are only counted.

Copies go out after the client's response is written (the next turn of the event loop), so
neither the client's status nor its latency can depend on a shadow. They use the upstream
client's callback path, like the primary request: no task, coroutine or future per copy
(BENCHMARKS.md, "Proxy"). The in-flight bound keeps a slow
shadow service from piling up connections and memory in the proxy: over it, copies are dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from proxy.forward import Result, UpstreamClient, UpstreamError
from proxy.metrics import ProxyMetrics
from proxy.routing import Target

log = logging.getLogger("proxy.shadow")


class ShadowSender:
    def __init__(self, client: UpstreamClient, metrics: ProxyMetrics, limit: int, timeout: float):
        self._client = client
        self._metrics = metrics
        self._limit = limit
        self._timeout = timeout
        self._in_flight = 0

    def submit(self, route: str, targets: tuple[Target, ...], header_block: bytes, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        for target in targets:
            if self._in_flight >= self._limit:
                self._metrics.shadow(route, target.name, "dropped")
                continue
            self._in_flight += 1
            self._metrics.shadows_in_flight.inc()  # inc/dec, not set_function: works across worker processes
            loop.call_soon(self._send, route, target, header_block, body)

    def _send(self, route: str, target: Target, header_block: bytes, body: bytes) -> None:
        done = functools.partial(self._done, route, target.name)
        try:
            self._client.send(target, header_block, body, self._timeout, done)
        except Exception:  # a shadow must never take the proxy down; count and note it
            log.exception("shadow copy to %s for %s failed unexpectedly", target.name, route)
            self._finished(route, target.name, "error")

    def _done(self, route: str, upstream: str, result: Result) -> None:
        outcome = result.kind if isinstance(result, UpstreamError) else f"{result.status // 100}xx"
        self._finished(route, upstream, outcome)

    def _finished(self, route: str, upstream: str, outcome: str) -> None:
        self._in_flight -= 1
        self._metrics.shadows_in_flight.dec()
        self._metrics.shadow(route, upstream, outcome)
