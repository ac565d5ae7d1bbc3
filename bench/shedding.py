"""Past capacity, does the pod refuse work or only get slower? Open-loop load (Poisson arrivals) at multiples of
a model's recorded capacity against its container as `factory test` runs it (memory limit, CPU quota of its
request), one state directory per build (e.g. main's code and this branch's), interleaved A/B/A/B.

Usage: python -m bench.shedding --state OLD_STATE --state NEW_STATE --model NAME [--model NAME ...]
       [--capacity-from NEW_STATE] [--multiples 0.5 0.9 1 2 4] [--seconds 8] [--rounds 2] [-f models.yaml]
       python -m bench.shedding --capacity-runs N --state STATE --model NAME: how long `factory test`'s capacity
       phase takes (find_capacity, --load-seconds 6) against that container, N times; copied into another
       checkout's bench/ and run from there, it times that checkout's code.
Each state directory holds a `factory build` of the models (and `factory test`'s report, whose
`capacity.rps` sets the rates: from --capacity-from, the same absolute rates for every state). The client
is factory.loadgen's open loop, in one process per loadgen.PROCESS_RPS of the rate, in processes of its own;
`late` is how late it sent its arrivals (p99, ms): its own delay, not in the latencies (counted from sending).
Prints one JSON line per step, then a table of medians over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from factory import dockerapi, manifests
from factory.catalog import Catalog, ModelSpec
from factory.loader import load_catalog
from factory.serve import container_served
from factory.state import StateDir
from factory.test import LOAD_SECONDS, load_bodies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", action="append", required=True, type=Path)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--capacity-from", type=Path)
    parser.add_argument("--multiples", nargs="+", type=float, default=[0.5, 0.9, 1.0, 2.0, 4.0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-f", "--catalog", type=Path, default=Path("models.yaml"))
    parser.add_argument("--capacity-runs", type=int, default=0)
    args = parser.parse_args()
    catalog = load_catalog(args.catalog)
    if args.capacity_runs:
        for model in args.model:
            _time_capacity(catalog, StateDir(args.state[0]), model, args.capacity_runs)
        return
    rows = []
    for model in args.model:
        capacity = _capacity(StateDir(args.capacity_from or args.state[-1]), model)
        for round_ in range(args.rounds):
            for state in args.state:
                for step in _steps(catalog, StateDir(state), model, capacity, args.multiples, args.seconds):
                    step.update(round=round_, state=str(state))
                    print(json.dumps(step), flush=True)
                    rows.append(step)
    _table(rows)


def _capacity(state: StateDir, model: str) -> float:
    return json.loads(state.report_path(model).read_text())["capacity"]["rps"]


@contextlib.contextmanager
def _container(catalog: Catalog, state: StateDir, model: str) -> Iterator[tuple[str, list[bytes], ModelSpec]]:
    """The model's container as `factory test` runs it: its URL, the load phase's bodies, its models.yaml entry."""
    spec = next(entry for entry in catalog.models if entry.name == model)
    limit = manifests.sizing_for(spec, manifests.measured_peak(state, model)).memory_limit
    bodies = load_bodies(state.resolved(model).signature, spec.batching.max_batch_size)
    with tempfile.TemporaryDirectory() as scratch, container_served(
            state.build_record(model).image_ref, Path(scratch) / "serve.log", limit,
            cpus=min(spec.resources.cores, dockerapi.cpus())) as served:
        yield served.url, bodies, spec


def _time_capacity(catalog: Catalog, state: StateDir, model: str, runs: int) -> None:
    from factory.capacity import find_capacity

    with _container(catalog, state, model) as (url, bodies, spec):
        for _ in range(runs):
            started = time.perf_counter()
            capacity = find_capacity(url, bodies, spec.slo.p99_ms, LOAD_SECONDS, lambda: None)
            print(json.dumps({"model": model, "seconds": round(time.perf_counter() - started, 1),
                              "rps": capacity.rps, "open_loop": len(capacity.open_loop)}), flush=True)
            time.sleep(1)


def _steps(catalog: Catalog, state: StateDir, model: str, capacity: float, multiples: list[float],
           seconds: float) -> list[dict]:
    steps = []
    with _container(catalog, state, model) as (url, bodies, _):
        for multiple in multiples:
            steps.append({"model": model, "multiple": multiple, "offered_rps": round(capacity * multiple, 1),
                          **_client(url, bodies, capacity * multiple, seconds)})
            time.sleep(1)  # the backlog of the step before drains
    return steps


def _client(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict:
    """The load from a process of its own (as an outside client would be), its figures as a dict."""
    script = ("import json, sys\nfrom factory.fuzz_report import nearest_rank\nfrom factory.loadgen import "
              "run_open_load\na = json.load(sys.stdin)\n"
              "r = run_open_load(a['url'], [b.encode() for b in a['bodies']], a['rate'], a['seconds'])\n"
              "print(json.dumps({'requests': r.requests, 'rps': round(r.rps, 1), 'late_ms': round(r.late_ms, 1), "
              "'p50_ms': round(r.percentile(50), 1), 'p99_ms': round(r.percentile(99), 1), "
              "'p99_answered_ms': round(nearest_rank(r.answered_ms, 99), 1), "
              "'shed': r.shed, 'failures': r.failures, 'statuses': r.statuses}))\n")
    payload = json.dumps({"url": url, "bodies": [body.decode() for body in bodies], "rate": rate, "seconds": seconds})
    output = subprocess.run([sys.executable, "-c", script], input=payload, capture_output=True, text=True,
                            check=True, timeout=seconds + 120, env=os.environ).stdout
    return json.loads(output)


def _table(rows: list[dict]) -> None:
    keys = sorted({(row["model"], row["state"], row["multiple"]) for row in rows})
    print(f"{'model':28} {'state':28} {'x':>4} {'offered':>8} {'late':>5} {'req/s':>8} {'503':>6} {'p99 ms':>8} "
          f"{'p99 200s':>8}")
    for model, state, multiple in keys:
        runs = [row for row in rows if (row["model"], row["state"], row["multiple"]) == (model, state, multiple)]
        median = {key: statistics.median(row[key] for row in runs)
                  for key in ("offered_rps", "late_ms", "rps", "shed", "p99_ms", "p99_answered_ms")}
        print(f"{model[:28]:28} {state[-28:]:28} {multiple:>4g} {median['offered_rps']:>8.0f} {median['late_ms']:>5.1f} "
              f"{median['rps']:>8.0f} {median['shed']:>6.0f} {median['p99_ms']:>8.1f} {median['p99_answered_ms']:>8.1f}")


if __name__ == "__main__":
    main()
