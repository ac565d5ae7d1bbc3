"""Shadow traffic: fire-and-forget copies whose outcomes are only counted.

Copies go out after the client's response is written (the next turn of the event loop), so
neither the client's status nor its latency can depend on a shadow. They use the upstream
client's callback path, like the primary request: no task, coroutine or future per copy
(BENCHMARKS.md, "Proxy"). The in-flight bound keeps a slow
shadow service from piling up connections and memory in the proxy: over it, copies are dropped. A request's
body outlives its reply while its copies are in flight, so the copies hold its bytes of the worker's buffer
budget (proxy.budget) until the last of them is done; a body the budget cannot spare is not copied
(outcome `over_budget`): up to max_shadow_in_flight bodies of max_body_bytes each were held outside it.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from proxy.budget import Held
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
        held = Held(self._client.budget)  # one body, shared by every copy: counted once, freed with the last copy
        if not held.take(len(body)):
            for target in targets:
                self._metrics.shadow(route, target.name, "over_budget")
            return
        loop = asyncio.get_running_loop()
        for target in targets:
            if self._in_flight >= self._limit:
                self._metrics.shadow(route, target.name, "dropped")
                continue
            self._in_flight += 1
            self._metrics.shadows_in_flight.inc()  # inc/dec, not set_function: works across worker processes
            loop.call_soon(self._send, route, target, header_block, body, held)

    def _send(self, route: str, target: Target, header_block: bytes, body: bytes, held: Held) -> None:
        done = functools.partial(self._done, route, target.name, held)
        try:
            self._client.send(target, header_block, body, self._timeout, done)
        except Exception:  # a shadow must never take the proxy down; count and note it
            log.exception("shadow copy to %s for %s failed unexpectedly", target.name, route)
            self._finished(route, target.name, "error")

    def _done(self, route: str, upstream: str, held: Held, result: Result) -> None:
        """`held`: the body's bytes, kept taken until the last copy's callback is gone."""
        outcome = result.kind if isinstance(result, UpstreamError) else f"{result.status // 100}xx"
        self._finished(route, upstream, outcome)

    def _finished(self, route: str, upstream: str, outcome: str) -> None:
        self._in_flight -= 1
        self._metrics.shadows_in_flight.dec()
        self._metrics.shadow(route, upstream, outcome)
