"""Prometheus metrics, one registry per app (so tests can build several apps in one process).

With several worker processes (`--workers N`) prometheus_client's multiprocess mode is on:
every worker writes its samples to files in a shared directory and /metrics, whichever
worker answers it, adds them all up.

Label values come only from the routing table (route path, variant and upstream names), a
small fixed set of outcome words, or HTTP status codes: a client cannot create new series.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

UNKNOWN_ROUTE = "unknown"
NO_VARIANT = "none"
# The proxy itself adds well under a millisecond; model calls take milliseconds to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REQUESTS_HELP = "Requests answered, by route, variant and status."
LATENCY_HELP = "Time from request to response, by route, variant and status class."


def prepare_multiprocess(directory: Optional[Path]) -> None:
    """Before the workers fork: turn multiprocess mode on (a directory) or make sure it is off.

    prometheus_client picks its value class when it is imported, from the environment; the
    proxy decides later, so the class is picked again here."""
    if directory is None:
        os.environ.pop(MULTIPROC_ENV, None)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.get_value_class()


class _RequestStats(Collector):
    """Per-request counts and latencies, kept in plain lists and rendered at scrape time.

    prometheus_client's Counter.inc and Histogram.observe take a lock per call; on the hot
    path of a single-threaded event loop that was the largest cost after the socket writes.
    Both the updates and `collect` run on the event loop thread, so no lock is needed.
    """

    def __init__(self) -> None:
        # (route, variant, status) -> [count, sum of seconds, per-bucket counts (last is +Inf)]
        self._series: dict[tuple[str, str, int], list] = {}

    def observe(self, route: str, variant: str, status: int, seconds: float) -> None:
        series = self._series.get((route, variant, status))
        if series is None:
            series = self._series[(route, variant, status)] = [0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
        series[0] += 1
        series[1] += seconds
        series[2][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("proxy_requests", REQUESTS_HELP,
                                       labels=["route", "variant", "status"])
        by_class: dict[tuple[str, str, str], list] = {}
        for (route, variant, status), (count, total, buckets) in list(self._series.items()):
            requests.add_metric([route, variant, str(status)], count)
            merged = by_class.setdefault((route, variant, f"{status // 100}xx"), [0.0, [0] * len(buckets)])
            merged[0] += total
            merged[1] = [a + b for a, b in zip(merged[1], buckets, strict=True)]
        latency = HistogramMetricFamily("proxy_request_duration_seconds", LATENCY_HELP,
                                        labels=["route", "variant", "status_class"])
        for labels, (total, buckets) in by_class.items():
            running, cumulative = 0, []
            for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric(list(labels), cumulative, total)
        yield requests
        yield latency


class ProxyMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = MULTIPROC_ENV in os.environ
        self.registry = CollectorRegistry()
        r = self.registry
        # observe(route, variant, status, seconds): bound directly, it runs once per request.
        self.observe = self._shared_observer() if self.multiprocess else self._local_observer()
        self._upstream_failures = Counter("proxy_upstream_failures",
                                          "Failed upstream exchanges by kind: connect, timeout, reset, protocol, "
                                          "too_large, local (no file descriptor left), over_budget (answer bytes in "
                                          "flight), saturated (every connection busy past queue_ms), 5xx.",
                                          ["route", "variant", "kind"], registry=r)
        self._shadows = Counter("proxy_shadow_requests", "Shadow copies by outcome: 2xx, 3xx, 4xx, 5xx, "
                                "connect, timeout, reset, protocol, too_large, dropped (over the in-flight bound), "
                                "over_budget (the worker's buffer budget could not hold the body or the answer).",
                                ["route", "upstream", "outcome"], registry=r)
        self.shadows_in_flight = Gauge("proxy_shadow_in_flight", "Shadow copies not finished yet.", registry=r,
                                       multiprocess_mode="livesum")
        self._shadow_outcomes: dict[tuple[str, str, str], Counter] = {}  # labels() takes a lock and builds a key
        self._reloads = Counter("proxy_route_reloads", "Routing table loads by result (ok, error).",
                                ["result"], registry=r)
        self.routes_loaded = Gauge("proxy_routes_loaded", "Routes in the active table; 0 before the first load.",
                                   registry=r, multiprocess_mode="livemax")

    def _local_observer(self):
        requests = _RequestStats()
        self.registry.register(requests)
        return requests.observe

    def _shared_observer(self):
        """prometheus_client's own metrics: slower than _RequestStats, but they reach the shared files."""
        requests = Counter("proxy_requests", REQUESTS_HELP, ["route", "variant", "status"], registry=self.registry)
        latency = Histogram("proxy_request_duration_seconds", LATENCY_HELP, ["route", "variant", "status_class"],
                            buckets=LATENCY_BUCKETS, registry=self.registry)

        def observe(route: str, variant: str, status: int, seconds: float) -> None:
            requests.labels(route, variant, str(status)).inc()
            latency.labels(route, variant, f"{status // 100}xx").observe(seconds)
        return observe

    def upstream_failure(self, route: str, variant: str, kind: str) -> None:
        self._upstream_failures.labels(route, variant, kind).inc()

    def shadow(self, route: str, upstream: str, outcome: str) -> None:
        counter = self._shadow_outcomes.get((route, upstream, outcome))
        if counter is None:
            counter = self._shadow_outcomes[(route, upstream, outcome)] = self._shadows.labels(route, upstream, outcome)
        counter.inc()

    def reload(self, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "error").inc()

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged)
