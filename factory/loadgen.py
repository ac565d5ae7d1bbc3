"""Bounded loads of valid requests against a served model. Closed loop (`run_load`): `concurrency`
keep-alive connections, each sending its next request as soon as the previous answer is in. Open loop
(`run_open_load`): requests arrive at a rate (Poisson, seeded) whatever the server's pace, over a pool of
keep-alive connections, as clients behind a proxy send them; only there do requests arrive while others wait.
Above PROCESS_RPS the arrivals come from several client processes, each a Poisson stream of its share of
the rate (together one Poisson stream of the whole rate), and an open-loop load says how late it sent its
arrivals (`LoadResult.late_ms`, their p99): a client that cannot keep up offers less than it was asked to.
An arrival's latency counts from when the client sent it, a wait for one of the pool's connections included (the
server's doing), its own timer's lateness not: with no server at all, a sleep on uvloop wakes 0.1-0.24 ms late at
the median (p99 0.7-1.0 ms) at 100-6,000 arrivals a second, on asyncio's own loop 0.6-0.9 ms (p99 1.2-3.0), a
fifth to a half of a 5 ms objective.

Both go through load_client's pool of keep-alive connections (asyncio protocols parsed by httptools, on uvloop),
one pre-encoded request per body: a client built on http.client threads spends more CPU per request than the
server it measures (FIELD_NOTES), and one on asyncio streams 3-5x a compiled pod's (bench.load_client), which capped
the capacity `factory test` finds at the client's own speed. Every 503 must be an overload answer (the error shape
with a pod's or the proxy's overload code, load_client.SHED_CODES, and a `Retry-After`): anything else is counted as
a malformed shed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit

import uvloop

from factory.errors import ServeError
from factory.fuzz_report import nearest_rank
from factory.load_client import Pool, request_bytes

# One client process keeps to its schedule up to this rate beside a pod on the shared 2-core machine: 1.3 ms late
# (p99) at 6,000 req/s, 1.4-2.1 at 9,000 (`python -m bench.load_client`, BENCHMARKS.md "Session 19").
PROCESS_RPS = 6000.0
# Open loop: at most this many connections (the proxy's max_connections_per_upstream), shared among the client
# processes; an arrival finding all busy waits for one, and its latency counts from its arrival. Unbounded, a
# client past a pod's capacity opened a connection per arrival (4,914 in one step), overflowing the pod's listen
# backlog: answers took seconds of SYN retries, a wait no server can see or refuse.
OPEN_LOOP_CONNECTIONS = 256


@dataclass
class LoadResult:
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    answered_ms: list[float] = field(default_factory=list)  # the 200s' alone
    seconds: float = 0.0
    malformed_sheds: int = 0  # 503s without the error shape or Retry-After
    connections: int = 0  # opened, reconnects included
    late_ms: float = 0.0  # open loop: how late the client sent its arrivals (p99; its timer's, not in latencies)
    slow_over_ms: Optional[float] = None  # open loop with an objective: answers slower than this count as `slow`
    slow: int = 0
    sent: int = 0  # open loop: arrivals sent
    stopped: bool = False  # open loop: it stopped sending once it had missed its objective for certain

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def shed(self) -> int:
        return self.statuses.get("503", 0)

    @property
    def failures(self) -> int:
        """Answers a valid request must never get: anything but 200 or a well-formed 503."""
        wrong = sum(count for status, count in self.statuses.items() if status not in ("200", "503"))
        return wrong + self.malformed_sheds

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, percent: float) -> float:
        return nearest_rank(self.latencies_ms, percent)

    def count(self, status: str, latency_ms: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies_ms.append(latency_ms)
        if self.slow_over_ms is not None and latency_ms > self.slow_over_ms:
            self.slow += 1
        if status == "200":
            self.answered_ms.append(latency_ms)

    def merge(self, other: "LoadResult") -> None:
        """`other`'s requests added to these, as one load over the longer of the two spans."""
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count
        self.latencies_ms += other.latencies_ms
        self.answered_ms += other.answered_ms
        self.seconds = max(self.seconds, other.seconds)
        self.malformed_sheds += other.malformed_sheds
        self.connections += other.connections
        self.late_ms = max(self.late_ms, other.late_ms)
        self.slow += other.slow
        self.sent += other.sent
        self.stopped = self.stopped or other.stopped


def run_load(base_url: str, bodies: list[bytes], concurrency: int, duration_s: float,
             max_requests: int = 200_000, timeout_s: float = 30.0) -> LoadResult:
    """`concurrency` connections cycle through `bodies` (POST /predict) until the time or request budget is spent."""
    return uvloop.run(_load(base_url, bodies, concurrency, duration_s, max_requests, timeout_s))


async def _load(base_url: str, bodies: list[bytes], concurrency: int, duration_s: float, max_requests: int,
                timeout_s: float) -> LoadResult:
    parts = urlsplit(base_url)
    requests = [request_bytes(parts.hostname, parts.port, body) for body in bodies]
    result, sent = LoadResult(), 0
    started = time.perf_counter()
    deadline = started + duration_s

    def send() -> None:
        nonlocal sent
        if sent < max_requests and time.perf_counter() < deadline:
            pool.submit(requests[sent % len(requests)], time.perf_counter())
            sent += 1

    pool = Pool(parts.hostname, parts.port, concurrency, result, timeout_s, answered=send)
    for _ in range(concurrency):
        send()
    await pool.drained()
    result.seconds = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class Objective:
    """When an open-loop load has missed a p99 objective for certain, whatever its remaining arrivals get: a 503, a
    failure, or more answers slower than `p99_ms` than the nearest-rank p99 of `arrivals` (all it plans) allows.
    That many slow answers put the p99 of any part of the load over the objective too, so it stops there: a step
    past a model's capacity no longer runs its course for a verdict already known."""

    p99_ms: float
    arrivals: int

    @property
    def slow_allowed(self) -> int:
        return self.arrivals - math.ceil(0.99 * self.arrivals)

    def missed(self, result: LoadResult) -> bool:
        return result.shed > 0 or result.failures > 0 or result.slow > self.slow_allowed


def run_open_load(base_url: str, bodies: list[bytes], rate: float, duration_s: float, seed: int = 0,
                  timeout_s: float = 30.0, connections: int = OPEN_LOOP_CONNECTIONS,
                  slo_p99_ms: Optional[float] = None) -> LoadResult:
    """ceil(`rate` × `duration_s`) requests (POST /predict, cycling through `bodies`) arriving at `rate` per second,
    from one client process per PROCESS_RPS of the rate (at most one per core), over at most `connections`. With
    `slo_p99_ms`, each client stops sending once the load has missed it for certain (`Objective`)."""
    processes = min(os.cpu_count() or 1, math.ceil(rate / PROCESS_RPS))
    objective = None if slo_p99_ms is None else Objective(slo_p99_ms, _arrivals(rate, duration_s))
    if processes <= 1:
        return uvloop.run(_open_load(base_url, bodies, rate, duration_s, seed, timeout_s, connections, objective))
    return _in_processes(processes, base_url, bodies, rate, duration_s, seed, timeout_s, connections, objective)


def _arrivals(rate: float, duration_s: float) -> int:
    return max(1, math.ceil(rate * duration_s))


def _in_processes(processes: int, base_url: str, bodies: list[bytes], rate: float, duration_s: float, seed: int,
                  timeout_s: float, connections: int, objective: Optional[Objective]) -> LoadResult:
    """`processes` clients (`python -m factory.loadgen`), each sending rate / `processes` with a seed of its
    own, started together once all are ready; their results as one load. Each stops on its own answers against
    the whole load's objective: its slow answers alone past what the whole load allows are a certain miss."""
    share = {"url": base_url, "bodies": [body.decode("latin-1") for body in bodies], "rate": rate / processes,
             "duration_s": duration_s, "timeout_s": timeout_s, "connections": connections // processes,
             "objective": dataclasses.asdict(objective) if objective else None}
    clients = [subprocess.Popen([sys.executable, "-m", "factory.loadgen"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    try:
        for index, client in enumerate(clients):
            if client.stdout.readline().strip() != "ready":
                raise _client_died(index, processes, client, "before it was ready")
            _tell(client, json.dumps({**share, "seed": seed + index}) + "\n")
        started = time.perf_counter()
        for client in clients:
            _tell(client, "go\n", last=True)
        result = LoadResult()
        for index, client in enumerate(clients):
            try:
                result.merge(LoadResult(**json.loads(client.stdout.read())))
            except ValueError:
                raise _client_died(index, processes, client, "during the load") from None
        result.seconds = time.perf_counter() - started
        return result
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
            client.wait()


def _tell(client: subprocess.Popen, line: str, last: bool = False) -> None:
    """A line to a client process; one that has died is found when its result is read."""
    try:
        client.stdin.write(line)
        client.stdin.flush()
        if last:
            client.stdin.close()
    except BrokenPipeError:
        pass


def _client_died(index: int, processes: int, client: subprocess.Popen, when: str) -> ServeError:
    return ServeError(f"load client process {index + 1} of {processes} (python -m factory.loadgen) exited "
                      f"{client.wait()} {when}; its error is above. The load was not measured: run `factory test` "
                      "again, and if it happens again, report the error above")


def _client_process() -> None:
    """One client process's share of an open-loop load: "ready" once imported, then its parameters, then on "go"
    the load, its result as JSON."""
    print("ready", flush=True)
    share = json.loads(sys.stdin.readline())
    bodies = [body.encode("latin-1") for body in share["bodies"]]
    sys.stdin.readline()
    objective = Objective(**share["objective"]) if share["objective"] else None
    result = uvloop.run(_open_load(share["url"], bodies, share["rate"], share["duration_s"], share["seed"],
                                    share["timeout_s"], share["connections"], objective))
    _write_all(sys.stdout.fileno(), (json.dumps(dataclasses.asdict(result)) + "\n").encode())


def _write_all(fd: int, data: bytes) -> None:
    """All of `data`, however many writes it takes. Under PYTHONUNBUFFERED (as many images set it) print() makes one
    write(2) and drops what it did not take: a result over the pipe's 64 KiB, written while the parent read another
    client's, came out cut after 65,536 bytes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def _open_load(base_url: str, bodies: list[bytes], rate: float, duration_s: float, seed: int,
                     timeout_s: float, connections: int = OPEN_LOOP_CONNECTIONS,
                     objective: Optional[Objective] = None) -> LoadResult:
    parts = urlsplit(base_url)
    requests = [request_bytes(parts.hostname, parts.port, body) for body in bodies]
    result = LoadResult(slow_over_ms=objective.p99_ms if objective else None)
    pool = Pool(parts.hostname, parts.port, connections, result, timeout_s)
    arrivals = random.Random(seed)
    late_ms = []
    started = arrival = time.perf_counter()
    for index in range(_arrivals(rate, duration_s)):
        if objective and objective.missed(result):
            result.stopped = True
            break
        arrival += arrivals.expovariate(rate)
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        sent = time.perf_counter()
        late_ms.append((sent - arrival) * 1000)
        pool.submit(requests[index % len(requests)], sent)
        result.sent += 1
    result.late_ms = nearest_rank(late_ms, 99)
    await pool.drained()
    result.seconds = time.perf_counter() - started
    return result


if __name__ == "__main__":
    _client_process()
