"""A small closed-loop load generator for fault tests (correctness under load, not speed)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp

CLIENT_FAILED = -1  # the client itself gave up: a hung or reset request, never acceptable here


@dataclass
class Result:
    started: float
    elapsed: float
    status: int
    upstream: str = ""


@dataclass
class Load:
    url: str
    concurrency: int = 8
    client_timeout: float = 10.0
    results: list[Result] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def __aenter__(self) -> "Load":
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.client_timeout))
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def _worker(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                async with self._session.post(self.url, data=b'{"rows": []}') as response:
                    body = await response.json(content_type=None)
                    upstream = body.get("upstream", "") if isinstance(body, dict) else ""
                    result = Result(started, time.monotonic() - started, response.status, upstream)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                result = Result(started, time.monotonic() - started, CLIENT_FAILED)
            self.results.append(result)
            if result.status != 200:
                await asyncio.sleep(0.002)  # errors come back in microseconds: don't spin the CPU

    def since(self, moment: float) -> list[Result]:
        return [r for r in self.results if r.started >= moment]

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.01)
