"""A served model's capacity: the highest request rate it sustains with p99 within its latency objective
(models.yaml `slo.p99_ms`) and not one request shed (503).

Measured by `factory test` as the load phase: closed-loop load on a ladder of 1, 2, 4 … 64 connections,
an equal share of the phase's time each (the first step that is only too slow is measured twice). Capacity is the best rate reached before the first step that
misses the objective or sheds; the server's CPU during that step (one core = 100 %) is what the
HorizontalPodAutoscaler targets (factory/manifests.py). Steps above capacity still run: they show
how the model degrades (slower, or shedding with 503 + Retry-After) and drive its memory peak.
"""

from __future__ import annotations

from typing import Callable, Optional

from factory.loadgen import LoadResult, run_load
from factory.state import CapacityReport, CapacityStep

LADDER = (1, 2, 4, 8, 16, 32, 64)
CpuClock = Callable[[], Optional[float]]


def find_capacity(url: str, bodies: list[bytes], slo_p99_ms: int, seconds: float, cpu_seconds: CpuClock,
                  ladder: tuple[int, ...] = LADDER) -> CapacityReport:
    """The ladder, each step once; the first step that only misses the objective is measured once more
    (a short step's p99 is nearly its slowest request, and one stall of a shared machine is not the model)."""
    steps, remeasured = [], False
    for connections in ladder:
        step = _step(url, bodies, connections, seconds / len(ladder), cpu_seconds)
        if not remeasured and _only_slow(step, slo_p99_ms):
            remeasured = True
            step = _step(url, bodies, connections, seconds / len(ladder), cpu_seconds).model_copy(
                update={"attempts": 2})
        steps.append(step)
    return capacity_of(steps, slo_p99_ms)


def _only_slow(step: CapacityStep, slo_p99_ms: int) -> bool:
    return step.requests > 0 and not step.shed and not step.failures and step.p99_ms > slo_p99_ms


def capacity_of(steps: list[CapacityStep], slo_p99_ms: int) -> CapacityReport:
    """The best step below the first one that missed the objective, shed, failed or sent nothing."""
    sustained: list[CapacityStep] = []
    for step in steps:
        if step.requests == 0 or step.shed or step.failures or step.p99_ms > slo_p99_ms:
            break
        sustained.append(step)
    best = max(sustained, key=lambda step: step.rps, default=None)
    return CapacityReport(slo_p99_ms=slo_p99_ms, rps=best.rps if best else 0.0,
                          connections=best.connections if best else 0, p99_ms=best.p99_ms if best else 0.0,
                          cpu_percent=best.cpu_percent if best else None, steps=steps)


def capacity_cell(capacity: Optional[CapacityReport]) -> str:
    """`412 @ p99≤100` : the rate sustained within the objective it was measured against."""
    if capacity is None or not capacity.steps:
        return "-"
    return f"{capacity.rps:.0f} @ p99≤{capacity.slo_p99_ms}"


def tree_cpu_seconds(pid: int) -> Optional[float]:
    """CPU time (user + system) of `pid` and its descendants; None when it is gone or not visible here."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        return sum(sum(process.cpu_times()[:2]) for process in processes)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _step(url: str, bodies: list[bytes], connections: int, seconds: float, cpu_seconds: CpuClock) -> CapacityStep:
    cpu_before = cpu_seconds()
    load = run_load(url, bodies, concurrency=connections, duration_s=seconds)
    cpu_after = cpu_seconds()
    cpu = None
    if cpu_before is not None and cpu_after is not None and load.seconds > 0:
        cpu = round((cpu_after - cpu_before) / load.seconds * 100, 1)
    return step_record(connections, load, cpu)


def step_record(connections: int, load: LoadResult, cpu_percent: Optional[float]) -> CapacityStep:
    return CapacityStep(connections=connections, requests=load.requests, rps=round(load.rps, 1),
                        p50_ms=round(load.percentile(50), 2), p99_ms=round(load.percentile(99), 2),
                        shed=load.shed, failures=load.failures, statuses=dict(sorted(load.statuses.items())),
                        cpu_percent=cpu_percent)
