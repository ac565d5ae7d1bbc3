"""Shadow traffic: fire-and-forget copies whose outcomes are only counted.

Copies are sent after the client already has its response, on their own tasks, so neither the
client's status nor its latency can depend on a shadow. The in-flight bound keeps a slow
shadow service from piling up tasks and memory in the proxy: over it, copies are dropped.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.forward import UpstreamClient, UpstreamError
from proxy.metrics import ProxyMetrics
from proxy.routing import Target

log = logging.getLogger("proxy.shadow")


class ShadowSender:
    def __init__(self, client: UpstreamClient, metrics: ProxyMetrics, limit: int, timeout: float):
        self._client = client
        self._metrics = metrics
        self._limit = limit
        self._timeout = timeout
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    def submit(self, route: str, targets: tuple[Target, ...], header_block: bytes, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        for target in targets:
            if len(self._tasks) >= self._limit:
                self._metrics.shadow(route, target.name, "dropped")
                continue
            task = loop.create_task(self._send(route, target, header_block, body))
            self._tasks.add(task)
            self._metrics.shadows_in_flight.inc()  # inc/dec, not set_function: works across worker processes
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._metrics.shadows_in_flight.dec()

    async def _send(self, route: str, target: Target, header_block: bytes, body: bytes) -> None:
        try:
            response = await self._client.post(target, header_block, body, self._timeout)
        except UpstreamError as exc:
            outcome = exc.kind
        except Exception:  # a shadow must never take the proxy down; count and note it
            log.exception("shadow copy to %s for %s failed unexpectedly", target.name, route)
            outcome = "error"
        else:
            outcome = f"{response.status // 100}xx"
        self._metrics.shadow(route, target.name, outcome)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
