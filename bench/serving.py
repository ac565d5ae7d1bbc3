"""Our Bento vs `mlflow models serve` of the same registry version, side by side in one run.

Usage: python -m bench.serving [--model NAME] [--seconds 10] [--connections 50] [--repeats 3]
Needs the example registry (`make registry`); builds the model if needed. wrk (Debian) drives the
load from core 0 while the server runs on core 1, one worker each, one row per request.
Prints rps, p50, p99 and idle/peak RSS of each whole process tree, and ratios to mlflow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import use_example_registry
from bench.wrk import WrkResult, run_wrk
from factory.memory import MIB, MemoryProfile
from factory.runtime import bento_python
from factory.serve import Served, free_port, process_served, served
from factory.state import StateDir

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "match_probability_2_TAXI_trafficaware"


@dataclass
class Measured:
    name: str
    runs: list[WrkResult]
    idle_mib: float
    peak_mib: float

    @property
    def rps(self) -> float:
        return statistics.median(run.rps for run in self.runs)

    @property
    def p50(self) -> float:
        return statistics.median(run.p50_ms for run in self.runs)

    @property
    def p99(self) -> float:
        return statistics.median(run.p99_ms for run in self.runs)


def measure(name: str, server: Served, path: str, body: str, args: argparse.Namespace) -> Measured:
    _pin(server.pid, "1")
    with MemoryProfile.of_process(server.pid) as memory:
        with memory.phase("idle"):
            time.sleep(2)
        with memory.phase("load"):
            run_wrk(server.url + path, body, 2, args.connections)  # warm-up, not counted
            runs = [run_wrk(server.url + path, body, args.seconds, args.connections) for _ in range(args.repeats)]
    return Measured(name, runs, memory.phases["idle"].rss / MIB, memory.peak_bytes / MIB)


def _pin(pid: int, core: str) -> None:
    """Pin the server's whole tree to one core; wrk runs on the other."""
    import psutil

    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        process.cpu_affinity([int(core)])


def complete_rows(golden: list[dict]) -> list[dict]:
    """Golden rows with every column set, smallest values first: `mlflow models serve` drops absent
    optional columns and the model then fails, so side-by-side runs send only complete rows."""
    rows = [r for case in golden for r in case["inputs"] if None not in r.values()]
    widest = max(len(r) for r in rows)
    return sorted((r for r in rows if len(r) == widest),
                  key=lambda r: sum(abs(v) for v in r.values() if not isinstance(v, str)))


def mlflow_served(model_uri: str, log: Path):
    port = free_port()
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # mlflow runs its own CLI
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "-h", "127.0.0.1",
               "-p", str(port), "--env-manager", "local", "-w", "1"]
    return process_served(command, Path.cwd(), log, port, "/ping")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    state = StateDir.from_env().activate()
    use_example_registry()
    subprocess.run([sys.executable, "-m", "factory.cli", "build", args.model], cwd=ROOT, check=True)
    record = state.build_record(args.model)
    row = complete_rows(state.golden(args.model, Path(record.golden)))[0]
    logs = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    results = []
    with served(record.bento_tag, logs / "bento.log", "single", bento_python(state, record.model)) as server:
        results.append(measure("bento (one process, lean)", server, "/predict", json.dumps({"inputs": [row]}), args))
    with served(record.bento_tag, logs / "bentoml-serve.log", "bentoml") as server:
        results.append(measure("bentoml serve (factory venv)", server, "/predict", json.dumps({"inputs": [row]}), args))
    model_uri = f"models:/{record.registry['name']}/{record.registry['version']}"
    with mlflow_served(model_uri, logs / "mlflow.log") as server:
        results.append(measure("mlflow models serve", server, "/invocations",
                               json.dumps({"dataframe_records": [row]}), args))
    print_table(results, args)


def print_table(results: list[Measured], args: argparse.Namespace) -> None:
    baseline = results[-1]
    print(f"wrk -c{args.connections}, {args.seconds:.0f} s x {args.repeats} (medians), 1 row/request, 1 worker each")
    print(f"{'server':<30} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'idle MiB':>9} {'peak MiB':>9} "
          f"{'rps x':>6} {'p99 x':>6}")
    for result in results:
        print(f"{result.name:<30} {result.rps:>8.0f} {result.p50:>8.1f} {result.p99:>8.1f} {result.idle_mib:>9.0f} "
              f"{result.peak_mib:>9.0f} {result.rps / baseline.rps:>6.2f} {result.p99 / baseline.p99:>6.2f}")
    errors = {result.name: sum(run.errors for run in result.runs) for result in results}
    print(f"non-2xx or socket errors: {errors}")


if __name__ == "__main__":
    main()
