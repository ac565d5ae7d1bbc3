"""Latency at low load after a burst, req/s by connections, full-batch rows/s and idle RSS: our Bento
(one process, as the pod runs it) vs `mlflow models serve` of the same registry version, side by side.

Usage: python -m bench.latency [--model NAME ...] [--burst-seconds 10]
Needs the example registry (`make registry`); builds the models if needed. wrk (Debian) drives the load
from core 0, the server's process tree is pinned to core 1. Per model and server, in this order:
idle RSS; one client, fresh (p50/p99); 50 connections for --burst-seconds; one client right after the
burst; req/s at 1, 4, 16, 50 connections with non-2xx counts; rows/s with full batches (max_batch_size
rows per request, 4 connections). The in-process floor is Predictor.predict on the same full batch, in
the model's own serving venv. ~70 s per model on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import use_example_registry
from bench.serving import ROOT, _pin, complete_rows, mlflow_served
from bench.wrk import WrkResult, run_wrk
from factory.catalog import ModelSpec
from factory.loader import load_catalog
from factory.memory import MIB, tree_sample
from factory.runtime import bento_python
from factory.serve import Served, bento_source, served
from factory.state import StateDir

DEFAULT_MODELS = ["match_probability_2_TAXI_trafficaware", "eta_minutes_5_PHV"]
CONNECTIONS = (1, 4, 16, 50)
ONE_CLIENT_S = 3
LEVEL_S = 2
FULL_BATCH_S = 2
FULL_BATCH_CONNECTIONS = 4
FLOOR = """import json, statistics, sys, time
import bentoml, mf_runtime
resolved = mf_runtime.load_resolved("service.py")
model = bentoml.models.get(resolved["bento_model_tag"])
predictor = mf_runtime.Predictor(model.path_of("mlflow_model"), resolved)
Row = mf_runtime.row_model(resolved["signature"]["inputs"])
rows = [Row.model_validate(row) for row in json.loads(sys.argv[1])]
def seconds(batch, repeats):
    samples = []
    for _ in range(repeats):
        started = time.perf_counter(); predictor.predict(batch); samples.append(time.perf_counter() - started)
    return statistics.median(samples)
seconds(rows, 10)
print(json.dumps({"one_row_ms": seconds(rows[:1], 100) * 1000, "full_batch_ms": seconds(rows, 100) * 1000}))
"""


@dataclass
class Measured:
    server: str
    idle_mib: float = 0.0
    fresh: WrkResult | None = None
    burst: WrkResult | None = None
    after: WrkResult | None = None
    levels: dict[int, WrkResult] = field(default_factory=dict)
    full_batch: WrkResult | None = None


def measure(name: str, server: Served, url: str, one: str, full: str, burst_s: float) -> Measured:
    _pin(server.pid, "1")
    measured = Measured(name)
    time.sleep(2)
    sample = tree_sample(server.pid)
    measured.idle_mib = sample.rss / MIB if sample else 0.0
    measured.fresh = run_wrk(url, one, ONE_CLIENT_S, 1)
    measured.burst = run_wrk(url, one, burst_s, 50)
    measured.after = run_wrk(url, one, ONE_CLIENT_S, 1)  # right after the burst: what the batcher learnt
    measured.levels = {connections: run_wrk(url, one, LEVEL_S, connections) for connections in CONNECTIONS}
    measured.full_batch = run_wrk(url, full, FULL_BATCH_S, FULL_BATCH_CONNECTIONS)
    return measured


def in_process_floor(state: StateDir, model: str, bento_tag: str, rows: list[dict]) -> dict:
    # On the server's core, as the server runs: the floor is what that core does without HTTP.
    output = subprocess.run(["taskset", "-c", "1", str(bento_python(state, model)), "-c", FLOOR, json.dumps(rows)],
                            cwd=bento_source(bento_tag), capture_output=True, text=True, check=True, timeout=300)
    return json.loads(output.stdout.strip().splitlines()[-1])


def bench_model(state: StateDir, spec: ModelSpec, burst_s: float, logs: Path) -> None:
    record = state.build_record(spec.name)
    rows = complete_rows(state.golden(spec.name, Path(record.golden)))
    batch = [rows[index % len(rows)] for index in range(spec.batching.max_batch_size)]
    floor = in_process_floor(state, spec.name, record.bento_tag, batch)
    results = []
    with served(record.bento_tag, logs / f"{spec.name}.log", "single", bento_python(state, spec.name)) as server:
        results.append(measure("our Bento (one process)", server, server.url + "/predict",
                               json.dumps({"inputs": rows[:1]}), json.dumps({"inputs": batch}), burst_s))
    model_uri = f"models:/{record.registry['name']}/{record.registry['version']}"
    with mlflow_served(model_uri, logs / f"{spec.name}-mlflow.log") as server:
        results.append(measure("mlflow models serve", server, server.url + "/invocations",
                               json.dumps({"dataframe_records": rows[:1]}), json.dumps({"dataframe_records": batch}),
                               burst_s))
    print_model(spec, floor, results)


def print_model(spec: ModelSpec, floor: dict, results: list[Measured]) -> None:
    ours, mlflow = results
    rows = spec.batching.max_batch_size
    floor_rows_s = rows / floor["full_batch_ms"] * 1000
    print(f"\n## {spec.name} (max_batch_size {rows}); in-process predict: 1 row {floor['one_row_ms']:.3f} ms, "
          f"{rows} rows {floor['full_batch_ms']:.3f} ms = {floor_rows_s:,.0f} rows/s (the floor)")
    print(f"{'':28} {'ours':>16} {'mlflow serve':>16} {'ours / mlflow':>14}")
    _line("idle RSS MiB", ours.idle_mib, mlflow.idle_mib, "{:.0f}")
    for label, pick in (("1 client fresh", lambda m: m.fresh), ("1 client after burst", lambda m: m.after)):
        _line(f"{label} p50 ms", pick(ours).p50_ms, pick(mlflow).p50_ms, "{:.2f}")
        _line(f"{label} p99 ms", pick(ours).p99_ms, pick(mlflow).p99_ms, "{:.2f}")
    print(f"{'after / fresh p50':28} {ours.after.p50_ms / ours.fresh.p50_ms:>16.2f} "
          f"{mlflow.after.p50_ms / mlflow.fresh.p50_ms:>16.2f}   (goal: ours ≤ 1.2)")
    _line("burst req/s (50 conns)", ours.burst.rps, mlflow.burst.rps, "{:.0f}")
    for connections in CONNECTIONS:
        a, b = ours.levels[connections], mlflow.levels[connections]
        _line(f"req/s at {connections} conns (non-2xx)", a.rps, b.rps, "{:.0f}", f"({a.errors} / {b.errors})")
    ours_rows, mlflow_rows = ours.full_batch.rps * rows, mlflow.full_batch.rps * rows
    _line(f"full batches rows/s ({FULL_BATCH_CONNECTIONS} conns)", ours_rows, mlflow_rows, "{:,.0f}",
          f"(non-2xx {ours.full_batch.errors} / {mlflow.full_batch.errors})")
    print(f"{'ours full-batch / floor':28} {ours_rows / floor_rows_s:>16.0%}   (goal ≥ 70 %)")


def _line(label: str, ours: float, mlflow: float, fmt: str, note: str = "") -> None:
    ratio = f"{ours / mlflow:.2f}" if mlflow else "-"
    print(f"{label:28} {fmt.format(ours):>16} {fmt.format(mlflow):>16} {ratio:>14} {note}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help=f"repeatable (default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--burst-seconds", type=float, default=10)
    args = parser.parse_args()
    state = StateDir.from_env().activate()
    use_example_registry()
    names = args.model or DEFAULT_MODELS
    subprocess.run([sys.executable, "-m", "factory.cli", "build", *names, "--no-image"], cwd=ROOT, check=True)
    catalog = {model.name: model for model in load_catalog(ROOT / "models.yaml").models}
    logs = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores; above ~1 the machine is shared)")
    for name in names:
        bench_model(state, catalog[name], args.burst_seconds, logs)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; serve logs in {logs}")


if __name__ == "__main__":
    main()
