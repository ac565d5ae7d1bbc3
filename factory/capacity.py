"""A served model's capacity: the highest request rate it sustains with p99 within its latency objective
(models.yaml `slo.p99_ms`) and not one request shed (503).

Measured by `factory test` as the load phase: closed-loop load on a ladder of 1, 2, 4 … 64 connections,
an equal share of the phase's time each (the first step that is only too slow is measured twice). Capacity is the best rate reached before the first step that
misses the objective or sheds; the server's CPU during that step (one core = 100 %) is what the
HorizontalPodAutoscaler targets (factory/manifests.py). Steps above capacity still run: they show
how the model degrades (slower, or shedding with 503 + Retry-After) and drive its memory peak.

A closed loop never sends a request while its connections' requests are still being answered, and
clients arriving at random do: at the rate one connection reached, a model taking 30 ms per run answered
open-loop arrivals with p99 61 ms against 47 ms closed loop, and without batching it shed requests at half
that rate (session 9's stranger sweep). So the capacity found is then offered open loop (Poisson arrivals, seeded)
for one more step, and halved until it holds (at most CONFIRM_TRIES rates; 0 when none does), then bisected
between the rate that held and the one that missed (REFINE_STEPS): the capacity
is a rate that random arrivals get within the objective with nothing shed, and its CPU the HPA's. A step
lasts for OPEN_LOOP_ARRIVALS arrivals, up to OPEN_LOOP_BOUND × the load phase's time (at least
OPEN_LOOP_MIN_S): the p99 of fewer is their slowest, which a lucky few arrivals keep low (a model taking 64
ms per run, objective 100 ms, held 3.5 req/s over 18 arrivals in 5 s; 116 arrivals at that rate had p99
121 ms). A step stops early once it has missed for certain (a 503, a failure, or more slow answers than the p99 of
all its arrivals allows: loadgen.Objective), with the verdict it would have had: a rate well past capacity took
0.12-0.16 of the time a step that runs its course takes, and the server's peak RSS was the same
(bench.early_stop).

A rate counts only where the client offered it: its arrivals sent no later behind their schedule (p99) than
CLIENT_LATE_SHARE of the objective, or CLIENT_LATE_FLOOR_MS, whichever is more. A client that cannot keep up
falls further behind with every arrival; one that keeps up is late only by its timer's jitter, 1.2-2.6 ms at p99
with no server at all and up to 8 ms beside a busy one on 2 cores (session 15's stranger sweep): against a tenth
of a 20 ms objective that refused every rate, and the model of that sweep held 1,700 req/s with p99 5.3 ms.
(Latencies count from when an arrival was sent: loadgen.) Past that the rate is unconfirmed (`unconfirmed_rps`, the highest such) and halved without counting as a try: the
capacity is a lower rate that was offered and held. The client runs in one process per loadgen.PROCESS_RPS
of the rate, at 26-118 µs of CPU per request (bench.load_client); a compiled example on 0.5 CPU closed its loop
at 9,106 req/s on the 2-core test machine and was recorded at 3,984 open loop, the client at most 4.9 ms late at
any step.
"""

from __future__ import annotations

from typing import Callable, Optional

from factory.loadgen import LoadResult, run_load, run_open_load
from factory.state import CapacityReport, CapacityStep

LADDER = (1, 2, 4, 8, 16, 32, 64)
CONFIRM_TRIES = 3
# Bisections between the rate that held and the one twice as high that did not (confirmed, _refined).
REFINE_STEPS = 2
# At most this many open-loop steps in all, rates the client could not offer included (each halves the rate).
OPEN_LOOP_MAX_STEPS = 8
CLIENT_LATE_SHARE = 0.1
CLIENT_LATE_FLOOR_MS = 10.0
# An open-loop step lasts long enough for this many arrivals (a p99 of fewer is their slowest), up to
# OPEN_LOOP_BOUND × --load-seconds, at least OPEN_LOOP_MIN_S: by default 15 s, 100 arrivals down to 6.7 req/s.
OPEN_LOOP_ARRIVALS = 100
OPEN_LOOP_BOUND = 2.5
OPEN_LOOP_MIN_S = 5.0
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
    step_s = seconds / len(ladder)
    return confirmed(capacity_of(steps, slo_p99_ms), lambda rate: _open_step(url, bodies, rate, open_seconds(
        rate, step_s, seconds), slo_p99_ms, cpu_seconds))


def open_seconds(rate: float, step_s: float, load_s: float) -> float:
    """A ladder step's time, or longer where that holds fewer than OPEN_LOOP_ARRIVALS arrivals (up to
    OPEN_LOOP_BOUND × `load_s`, the load phase's time, and at least OPEN_LOOP_MIN_S)."""
    return max(step_s, min(OPEN_LOOP_ARRIVALS / rate, max(OPEN_LOOP_MIN_S, OPEN_LOOP_BOUND * load_s)))


def confirmed(capacity: CapacityReport, measure: Callable[[float], CapacityStep]) -> CapacityReport:
    """The closed-loop capacity, offered open loop (`measure` at a rate) and halved until it holds; a rate the
    client could not offer is halved too, without counting as a try. A rate that holds after a halving is then
    refined (`_refined`)."""
    if not capacity.rps:
        return capacity
    tried, rate, unconfirmed, tries = [], capacity.rps, None, 0
    while tries < CONFIRM_TRIES and len(tried) < OPEN_LOOP_MAX_STEPS:
        tried.append(measure(rate))
        if not offered(tried[-1], capacity.slo_p99_ms):
            unconfirmed = max(unconfirmed or 0.0, rate)
        elif within(tried[-1], capacity.slo_p99_ms):
            held, unconfirmed = _refined(tried, capacity.slo_p99_ms, measure, unconfirmed)
            return capacity.model_copy(update={"rps": held.offered_rps, "p99_ms": held.p99_ms,
                                               "unconfirmed_rps": unconfirmed, "cpu_percent": held.cpu_percent,
                                               "open_loop": tried})
        else:
            tries += 1
        rate = round(rate / 2, 1)
    return capacity.model_copy(update={"rps": 0.0, "connections": 0, "p99_ms": 0.0, "cpu_percent": None,
                                       "unconfirmed_rps": unconfirmed, "open_loop": tried})


def _refined(tried: list[CapacityStep], slo_p99_ms: int, measure: Callable[[float], CapacityStep],
             unconfirmed: Optional[float]) -> tuple[CapacityStep, Optional[float]]:
    """The last step of `tried` held; when the rate before it (twice as high) did not, the rates between them are
    bisected REFINE_STEPS times, so the capacity is within 1.25x of the lowest rate that missed, not 2x: one busy
    moment of the machine during a step halved a capacity (trafficaware at 0.5 CPU recorded 2,945 and 1,295 req/s
    in two demos, its client 92 ms late at 2,590 in the second). Appends the steps to `tried`."""
    held = tried[-1]
    if len(tried) == 1:
        return held, unconfirmed
    low, high = held.offered_rps, tried[-2].offered_rps
    for _ in range(REFINE_STEPS):
        rate = round((low + high) / 2, 1)
        step = measure(rate)
        tried.append(step)
        if not offered(step, slo_p99_ms):
            unconfirmed, high = max(unconfirmed or 0.0, rate), rate
        elif within(step, slo_p99_ms):
            low, held = rate, step
        else:
            high = rate
    return held, unconfirmed


def offered(step: CapacityStep, slo_p99_ms: int) -> bool:
    """Whether the client kept to its schedule closely enough for the step's latencies to be the server's."""
    return (step.client_late_ms or 0.0) <= max(CLIENT_LATE_SHARE * slo_p99_ms, CLIENT_LATE_FLOOR_MS)


def within(step: CapacityStep, slo_p99_ms: int) -> bool:
    """Whether a step held: answers, none shed or failed, p99 within the objective, and not stopped for a miss."""
    return (step.requests > 0 and not step.shed and not step.failures and step.p99_ms <= slo_p99_ms
            and step.stopped_after is None)


def _only_slow(step: CapacityStep, slo_p99_ms: int) -> bool:
    return step.requests > 0 and not step.shed and not step.failures and step.p99_ms > slo_p99_ms


def capacity_of(steps: list[CapacityStep], slo_p99_ms: int) -> CapacityReport:
    """The best step below the first one that missed the objective, shed, failed or sent nothing."""
    sustained: list[CapacityStep] = []
    for step in steps:
        if not within(step, slo_p99_ms):
            break
        sustained.append(step)
    best = max(sustained, key=lambda step: step.rps, default=None)
    return CapacityReport(slo_p99_ms=slo_p99_ms, rps=best.rps if best else 0.0,
                          connections=best.connections if best else 0, p99_ms=best.p99_ms if best else 0.0,
                          cpu_percent=best.cpu_percent if best else None, steps=steps)


def capacity_cell(capacity: Optional[CapacityReport]) -> str:
    """`412 @ p99≤100 on 0.5 cpu`: the rate sustained within the objective it was measured against, and the
    CPUs the server had (`all cpus`: no quota, the host process on every core of the test machine)."""
    if capacity is None or not capacity.steps:
        return "-"
    cpus = f"{capacity.cpu_limit:g} cpu" if capacity.cpu_limit else "all cpus"
    return f"{capacity.rps:.0f} @ p99≤{capacity.slo_p99_ms} on {cpus}"


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
    load, cpu = _timed(lambda: run_load(url, bodies, concurrency=connections, duration_s=seconds), cpu_seconds)
    return step_record(connections, load, cpu)


def _open_step(url: str, bodies: list[bytes], rate: float, seconds: float, slo_p99_ms: int,
               cpu_seconds: CpuClock) -> CapacityStep:
    """Open-loop load at `rate`, stopped as soon as it has missed the objective for certain (loadgen.Objective)."""
    load, cpu = _timed(lambda: run_open_load(url, bodies, rate, seconds, slo_p99_ms=slo_p99_ms), cpu_seconds)
    return open_step_record(rate, load, cpu)


def open_step_record(rate: float, load: LoadResult, cpu_percent: Optional[float]) -> CapacityStep:
    """An open-loop load at `rate` as a step: how late its client sent, and where it stopped once it had missed."""
    return step_record(max(1, load.connections), load, cpu_percent).model_copy(
        update={"offered_rps": rate, "client_late_ms": round(load.late_ms, 2),
                "stopped_after": load.sent if load.stopped else None})


def _timed(load: Callable[[], LoadResult], cpu_seconds: CpuClock) -> tuple[LoadResult, Optional[float]]:
    """The load, and the server's CPU during it (one core = 100), None when not visible."""
    cpu_before = cpu_seconds()
    result = load()
    cpu_after = cpu_seconds()
    if cpu_before is None or cpu_after is None or result.seconds <= 0:
        return result, None
    return result, round((cpu_after - cpu_before) / result.seconds * 100, 1)


def step_record(connections: int, load: LoadResult, cpu_percent: Optional[float]) -> CapacityStep:
    return CapacityStep(connections=connections, requests=load.requests, rps=round(load.rps, 1),
                        p50_ms=round(load.percentile(50), 2), p99_ms=round(load.percentile(99), 2),
                        shed=load.shed, failures=load.failures, statuses=dict(sorted(load.statuses.items())),
                        cpu_percent=cpu_percent)
