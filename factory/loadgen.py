"""A bounded concurrent load of valid requests against a served model (for the memory load phase).

Python threads saturate long before a real server does (FIELD_NOTES): this is for filling adaptive
batches and measuring memory under concurrency, not for throughput figures (bench/ uses wrk).
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from factory.fuzz_report import nearest_rank


@dataclass
class LoadResult:
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def shed(self) -> int:
        """503s: BentoML's batcher refusing work it cannot finish within max_latency_ms, by design."""
        return self.statuses.get("503", 0)

    @property
    def failures(self) -> int:
        return sum(count for status, count in self.statuses.items() if status not in ("200", "503"))

    def percentile(self, percent: float) -> float:
        return nearest_rank(self.latencies_ms, percent)

    def summary(self) -> dict:
        return {"requests": self.requests, "failures": self.failures, "shed": self.shed, "statuses": dict(sorted(self.statuses.items())),
                "rps": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
                "latency_p50_ms": round(self.percentile(50), 2), "latency_p99_ms": round(self.percentile(99), 2)}


def run_load(base_url: str, bodies: list[bytes], concurrency: int, duration_s: float,
             max_requests: int = 20_000, timeout_s: float = 30.0) -> LoadResult:
    """`concurrency` keep-alive clients cycle through `bodies` until the time or request budget is spent."""
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s
    budget = iter(range(max_requests))
    parts = urlsplit(base_url)

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        try:
            for index in budget:
                if time.monotonic() >= deadline:
                    return
                status, latency = _send(connection, bodies[index % len(bodies)])
                with lock:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    result.latencies_ms.append(latency)
        finally:
            connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + timeout_s + 5)
    result.seconds = time.monotonic() - started
    return result


def _send(connection: http.client.HTTPConnection, body: bytes) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        connection.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        status = str(response.status)
    except (OSError, http.client.HTTPException) as exc:
        connection.close()  # reconnects on the next request
        status = type(exc).__name__
    return status, (time.perf_counter() - started) * 1000

