"""An open-loop step past capacity, run to its end and stopped once it has missed: time, arrivals, server memory.

`factory test` offers its closed-loop capacity open loop, and rates above what a model sustains are tried there
every time (factory/capacity.py). Such a step used to run its course; now it stops as soon as its miss is certain
(loadgen.Objective). This runs both, alternating, against one pod of each example model (as the pod runs it, on core
1), with `factory test`'s load-phase bodies: the rate is `--multiple` × what 16 closed-loop connections reach, for
`--seconds` of arrivals, against the model's slo.p99_ms. Per variant, medians of `--rounds`: the step's wall time,
the arrivals it sent, the server's peak RSS during it (psutil, every 50 ms), the client's lateness (p99) and whether
it missed (capacity.within: it must, both ways).

Usage: python -m bench.early_stop [--model NAME ...] [--multiple 1.5] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.latency import example_models
from bench.serving import _pin
from factory.capacity import open_step_record, within
from factory.loadgen import run_load, run_open_load
from factory.memory import MIB, MemoryProfile
from factory.runtime import bento_python
from factory.serve import served
from factory.test import load_bodies

VARIANTS = {"runs its course": False, "stops once missed": True}


def bench_model(state, spec, multiple: float, seconds: float, rounds: int) -> dict:
    record = state.build_record(spec.name)
    bodies = load_bodies(state.resolved(spec.name).signature, spec.batching.max_batch_size)
    log = state.root / "bench-early-stop" / f"{spec.name}.log"
    measured: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    with served(record.bento_tag, log, "single", bento_python(state, spec.name)) as server:
        _pin(server.pid, "1")
        closed = run_load(server.url, bodies, concurrency=16, duration_s=2)
        rate = round(closed.rps * multiple, 1)
        for _ in range(rounds):
            for variant, stops in VARIANTS.items():
                time.sleep(1)  # the previous step's backlog drained
                measured[variant].append(_step(server.pid, server.url, bodies, rate, seconds, spec.slo.p99_ms, stops))
    return {"closed_rps": closed.rps, "rate": rate, "measured": measured}


def _step(pid: int, url: str, bodies: list[bytes], rate: float, seconds: float, slo_p99_ms: int, stops: bool) -> dict:
    with MemoryProfile.of_process(pid) as memory, memory.phase("step"):
        started = time.perf_counter()
        load = run_open_load(url, bodies, rate, seconds, slo_p99_ms=slo_p99_ms if stops else None)
        took = time.perf_counter() - started
    step = open_step_record(rate, load, None)
    return {"seconds": took, "sent": load.sent, "peak_mib": memory.peak_bytes / MIB, "p99_ms": step.p99_ms,
            "shed": step.shed, "missed": not within(step, slo_p99_ms), "late_ms": step.client_late_ms}


def print_model(name: str, slo_p99_ms: int, result: dict) -> None:
    print(f"\n## {name}: {result['rate']:,.0f} req/s offered open loop ({result['closed_rps']:,.0f} closed loop at "
          f"16 connections × multiple), objective p99 ≤ {slo_p99_ms} ms")
    print(f"{'variant':18} {'seconds':>8} {'arrivals':>9} {'peak MiB':>9} {'p99 ms':>9} {'shed':>6} {'late ms':>8}  "
          "verdicts")
    medians = {}
    for variant, runs in result["measured"].items():
        medians[variant] = {key: statistics.median(run[key] for run in runs)
                            for key in ("seconds", "sent", "peak_mib", "p99_ms", "shed", "late_ms")}
        verdicts = ", ".join("missed" if run["missed"] else "held" for run in runs)
        row = medians[variant]
        print(f"{variant:18} {row['seconds']:>8.2f} {row['sent']:>9,.0f} {row['peak_mib']:>9.1f} {row['p99_ms']:>9.1f} "
              f"{row['shed']:>6.0f} {row['late_ms']:>8.1f}  {verdicts}")
    ran, stopped = medians["runs its course"], medians["stops once missed"]
    print(f"stopped / ran: time {stopped['seconds'] / ran['seconds']:.2f}, "
          f"arrivals {stopped['sent'] / ran['sent']:.2f}, peak RSS {stopped['peak_mib'] / ran['peak_mib']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append")
    parser.add_argument("--multiple", type=float, default=1.5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    state, specs = example_models(args)
    for spec in specs:
        print_model(spec.name, spec.slo.p99_ms, bench_model(state, spec, args.multiple, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
