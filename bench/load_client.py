"""The load generator's own CPU per request and lateness: its pool of asyncio protocols on uvloop (load_client)
against the asyncio-streams client it replaced, side by side against one pod.

`factory test` finds capacity with this client on the machine the pod runs on (2 cores here), so whatever CPU the
client spends per request is taken from the rates it can offer: an open-loop rate whose arrivals go out more than
10 ms late is not counted (capacity.CLIENT_LATE_FLOOR_MS), and the capacity recorded for a fast model then stays at a
lower rate that was offered. The baseline ("streams") is the client as factory/loadgen.py had it until session 19: per
request a task, `asyncio.wait_for` around a StreamReader's readuntil/readexactly, on asyncio's own loop.

One pod per example model (as the pod runs it, pinned to core 1), the client in this process pinned to core 0,
`factory test`'s load-phase bodies; per round, each client in turn: open loop at each of `--rates` for `--seconds`
(one client process, so the per-process figure is what PROCESS_RPS is judged by), then closed loop at 16
connections. Printed: the client's CPU µs per request (getrusage of this process), its lateness (p99 ms), the p99
latency and the rate achieved; medians over `--rounds`, and the ratio of the new client's CPU to the baseline's.

Usage: python -m bench.load_client [--model NAME ...] [--rates 1000,3000,6000] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import statistics
import time
from typing import Callable
from urllib.parse import urlsplit

import uvloop

from bench.latency import example_models, model_arguments
from bench.serving import _pin
from factory import loadgen
from factory.fuzz_report import nearest_rank
from factory.load_client import request_bytes, well_formed_shed
from factory.loadgen import LoadResult
from factory.runtime import bento_python
from factory.serve import served
from factory.test import load_bodies

CLOSED_CONNECTIONS = 16


# The baseline: the streams client as it was (one task per arrival, wait_for, StreamReader), on asyncio's loop.
async def _streams_open(url: str, bodies: list[bytes], rate: float, seconds: float) -> LoadResult:
    parts = urlsplit(url)
    requests = [request_bytes(parts.hostname, parts.port, body) for body in bodies]
    result, idle, sending = LoadResult(), [], []
    slots = asyncio.Semaphore(loadgen.OPEN_LOOP_CONNECTIONS)
    arrivals, late_ms = random.Random(0), []
    started = arrival = time.perf_counter()
    for index in range(max(1, round(rate * seconds))):
        arrival += arrivals.expovariate(rate)
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        sent = time.perf_counter()
        late_ms.append((sent - arrival) * 1000)
        sending.append(asyncio.create_task(_streams_pooled(parts, idle, slots, sent, requests[index % len(requests)],
                                                           result)))
        result.sent += 1
    result.late_ms = nearest_rank(late_ms, 99)
    await asyncio.gather(*sending)
    result.seconds = time.perf_counter() - started
    for _, writer in idle:
        writer.close()
    return result


async def _streams_closed(url: str, bodies: list[bytes], seconds: float) -> LoadResult:
    parts = urlsplit(url)
    requests = [request_bytes(parts.hostname, parts.port, body) for body in bodies]
    result, started = LoadResult(), time.perf_counter()

    async def client(offset: int) -> None:
        connection, index = None, offset
        while time.perf_counter() < started + seconds:
            connection = await _streams_exchange(parts, connection, requests[index % len(requests)],
                                                 time.perf_counter(), result)
            index += CLOSED_CONNECTIONS
        if connection:
            connection[1].close()

    await asyncio.gather(*(client(offset) for offset in range(CLOSED_CONNECTIONS)))
    result.seconds = time.perf_counter() - started
    return result


async def _streams_pooled(parts, idle: list, slots: asyncio.Semaphore, sent: float, request: bytes,
                          result: LoadResult) -> None:
    async with slots:
        connection = await _streams_exchange(parts, idle.pop() if idle else None, request, sent, result)
        if connection is not None:
            idle.append(connection)


async def _streams_exchange(parts, connection, request: bytes, sent: float, result: LoadResult):
    try:
        if connection is None:
            result.connections += 1
            connection = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), 30)
        reader, writer = connection
        writer.write(request)
        status, headers, payload = await asyncio.wait_for(_streams_response(reader), 30)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        result.count(type(exc).__name__, (time.perf_counter() - sent) * 1000)
        return None
    result.count(status, (time.perf_counter() - sent) * 1000)
    if status == "503" and not well_formed_shed(headers, payload):
        result.malformed_sheds += 1
    return connection


async def _streams_response(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
    return head[0].split(" ")[1], headers, await reader.readexactly(int(headers["content-length"]))


CLIENTS: dict[str, dict[str, Callable]] = {
    "streams": {"open": lambda url, bodies, rate, seconds: asyncio.run(_streams_open(url, bodies, rate, seconds)),
                "closed": lambda url, bodies, seconds: asyncio.run(_streams_closed(url, bodies, seconds))},
    "protocols": {"open": lambda url, bodies, rate, seconds: uvloop.run(loadgen._open_load(url, bodies, rate, seconds,
                                                                                          0, 30.0)),
                  "closed": lambda url, bodies, seconds: loadgen.run_load(url, bodies, CLOSED_CONNECTIONS, seconds)},
}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measured(run: Callable[[], LoadResult]) -> dict:
    before = _cpu_s()
    load = run()
    return {"cpu_us": (_cpu_s() - before) / max(load.requests, 1) * 1e6, "late_ms": load.late_ms,
            "p99_ms": load.percentile(99), "rps": load.rps, "failures": load.failures + load.shed}


def bench_model(state, spec, rates: list[float], seconds: float, rounds: int) -> dict:
    record = state.build_record(spec.name)
    bodies = load_bodies(state.resolved(spec.name).signature, spec.batching.max_batch_size)
    log = state.root / "bench-load-client" / f"{spec.name}.log"
    loads = [f"open {rate:,.0f}/s" for rate in rates] + [f"closed {CLOSED_CONNECTIONS}"]
    measured = {(client, load): [] for client in CLIENTS for load in loads}
    with served(record.bento_tag, log, "single", bento_python(state, spec.name)) as server:
        _pin(server.pid, "1")
        os.sched_setaffinity(0, {0})
        for _ in range(rounds):
            for client, run in CLIENTS.items():
                for rate, load in zip(rates, loads):
                    measured[client, load].append(_measured(lambda: run["open"](server.url, bodies, rate, seconds)))
                measured[client, loads[-1]].append(_measured(lambda: run["closed"](server.url, bodies, seconds)))
    return {"loads": loads, "measured": measured}


def print_model(name: str, result: dict) -> None:
    print(f"\n## {name}")
    print(f"{'load':13} {'client':10} {'CPU µs/req':>10} {'late p99 ms':>12} {'p99 ms':>7} {'req/s':>8} {'errors':>6}"
          f"   CPU / streams")
    for load in result["loads"]:
        cpu = {}
        for client in CLIENTS:
            runs = result["measured"][client, load]
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            cpu[client] = median["cpu_us"]
            ratio = f"{cpu[client] / cpu['streams']:.2f}" if client != "streams" else ""
            print(f"{load:13} {client:10} {median['cpu_us']:>10,.1f} {median['late_ms']:>12.2f} "
                  f"{median['p99_ms']:>7.2f} {median['rps']:>8,.0f} {median['failures']:>6.0f}   {ratio}")
        lates = [f"{run['late_ms']:.1f}" for client in CLIENTS for run in result["measured"][client, load]]
        print(f"{'':13} late p99 per run (streams…, protocols…): {', '.join(lates)}")


def main() -> None:
    parser = model_arguments(__doc__, pairs=0)  # --model; it takes no floor pairs
    parser.add_argument("--rates", default="1000,3000,6000", help="open-loop rates, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    state, specs = example_models(args)
    rates = [float(rate) for rate in args.rates.split(",")]
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for spec in specs:
        print_model(spec.name, bench_model(state, spec, rates, args.seconds, args.rounds))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
