"""Is the memory request right? Size from `factory test`, then drive a heavier held-back load and compare.

Usage: python -m bench.sizing [MODEL ...] [--seconds 15]   (default: the two e2e example models)
Needs the example registry (`make registry`); builds and tests the models first when needed.
For each model: the peak `factory test` measured, the memory request sized from it, the peak under a
held-back load (twice the clients, full batches only, longer), and the ratio request / actual peak.
Goal: actual peak ≤ request ≤ 1.3 × actual peak for every model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import psutil
from kubernetes.utils import parse_quantity

from bench import use_example_registry
from bench.wrk import run_wrk

from factory.golden import sample_requests
from factory.loader import load_catalog
from factory.manifests import sizing_for
from factory.memory import MIB, MemoryProfile
from factory.runtime import bento_python
from factory.serve import served
from factory.state import BuildRecord, StateDir

ROOT = Path(__file__).resolve().parent.parent
# Full batches from 8 clients keep 8 x max_batch_size rows in flight (the test's load phase mostly sent
# small requests); many more clients only make BentoML shed the excess with 503s, measuring nothing.
HELD_BACK_CLIENTS = 8
DEFAULT_MODELS = ["match_probability_2_TAXI_trafficaware", "eta_minutes_5_PHV"]


def held_back_peak(record: BuildRecord, signature: dict, max_batch_size: int, seconds: float,
                   state: StateDir) -> tuple[float, dict]:
    """Peak RSS under a load `factory test` never sent: wrk (not Python threads, which starve the
    server of CPU) from core 0, every request a full batch."""
    rows = [row for request in sample_requests(signature, 24, max_batch_size, seed=99) for row in request["inputs"]]
    body = json.dumps({"inputs": [rows[i % len(rows)] for i in range(max_batch_size)]})
    runtime = bento_python(state, record.model)
    with served(record.bento_tag, state.root / "bench-sizing.log", "single", runtime) as server, \
            MemoryProfile.of_process(server.pid) as memory:
        psutil.Process(server.pid).cpu_affinity([1])
        with memory.phase("held-back load"):
            load = run_wrk(server.url + "/predict", body, seconds, connections=HELD_BACK_CLIENTS)
    return memory.peak_bytes / MIB, {"requests": load.requests, "non_2xx": load.errors, "rps": load.rps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    use_example_registry()
    state = StateDir.from_env().activate()
    catalog = load_catalog(ROOT / "models.yaml")
    for command in ("build", "test"):
        subprocess.run([sys.executable, "-m", "factory.cli", command, *args.models], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    print(f"{'model':<40} {'test peak':>9} {'request':>8} {'held-back peak':>14} {'request/peak':>12}  ok  load")
    for name in args.models:
        model = next(m for m in catalog.models if m.name == name)
        report = state.test_report(name)
        request_mib = parse_quantity(sizing_for(model, report.peak_bytes).memory_request) / MIB
        signature = state.resolved(name).signature
        actual, load = held_back_peak(state.build_record(name), signature,
                                      model.batching.max_batch_size, args.seconds, state)
        ratio = float(request_mib) / actual
        ok = "yes" if 1.0 <= ratio <= 1.3 else "NO"
        print(f"{name:<40} {report.memory.peak_mib:>8.0f}M {float(request_mib):>7.0f}M {actual:>13.0f}M "
              f"{ratio:>12.2f}  {ok:<3} {load['requests']} requests x {model.batching.max_batch_size} rows, "
              f"{load['rps']:.0f}/s, {load['non_2xx']} non-2xx (shed)")


if __name__ == "__main__":
    main()
