"""Native vs compiled (ONNX) forms of each example model, side by side in one run: in-process predict
of 1 and 32 rows, then each served as the pod runs it (one process, its own venv): idle RSS and
one-client latency.

Usage: python -m bench.compiled [--iterations 300] [--seconds 3] [--repeats 1] [--served MODEL ...] [--work DIR]
Registers examples/train.py's models in DIR/registry (once) and builds models.yaml twice: as it is
(compiled where exact) and with `compile.enabled: false` (native). Both reuse their builds next time.
In-process: `mf_runtime.Predictor.run` (batch building + model) on golden rows, median µs.
Served: wrk -c1 from core 0, the server on core 1 (bench.serving.measure).
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
from pathlib import Path
from typing import Any, Callable

import yaml

from bench.serving import measure
from factory.compiled import COMPILED_FILE
from factory.loader import load_catalog
from factory.runtime import bento_module, bento_python
from factory.serve import served
from factory.state import StateDir

ROOT = Path(__file__).resolve().parent.parent
FORMS = ("native", "compiled")
# One model of each kind served (the five logistic models are one kind); every model runs in-process.
SERVED = ("match_probability_2_TAXI_trafficunaware", "match_probability_2_TAXI_trafficaware", "eta_minutes_5_PHV",
          "fare_estimate_2_TAXI_gpu")


def prepare(work: Path) -> tuple[list[str], dict[str, StateDir]]:
    """The example registry and both builds of every model in models.yaml."""
    registry = work / "registry"
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{registry / 'mlflow.db'}",
                       "BENTOML_HOME": str(work / "bentoml")})
    os.environ.setdefault("FACTORY_RUNTIME_HOME", str(work / "runtime"))  # one venv per set for both builds
    if not (registry / "mlflow.db").is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), "--registry", str(registry)], cwd=work,
                       check=True, capture_output=True)
    catalog = yaml.safe_load((ROOT / "models.yaml").read_text())
    names = [model.name for model in load_catalog(ROOT / "models.yaml").models]
    states = {}
    for form in FORMS:
        catalog.setdefault("defaults", {})["compile"] = {"enabled": form == "compiled"}
        path = work / f"models-{form}.yaml"
        path.write_text(yaml.safe_dump(catalog, sort_keys=False))
        states[form] = StateDir(work / f"state-{form}")
        built = subprocess.run([sys.executable, "-m", "factory.cli", "build", "-f", str(path), "--all", "--no-image"],
                               cwd=ROOT, env={**os.environ, "FACTORY_STATE": str(states[form].root)},
                               check=True, capture_output=True, text=True)
        print("\n".join(line for line in built.stdout.splitlines() if ": serves " in line), flush=True)
    return names, states


def predictor(state: StateDir, model: str) -> Any:
    import bentoml

    for name in ("mf_http", "mf_inputs", "mf_flavors"):
        bento_module(name)
    resolved = state.resolved(model).model_dump()
    if resolved["flavor"]["loader"] == "onnx":
        resolved["flavor"]["model_file"] = str(state.source_dir(model) / COMPILED_FILE)
    model_dir = bentoml.models.get(resolved["bento_model_tag"]).path_of("mlflow_model")
    return bento_module("mf_runtime").Predictor(model_dir, resolved)


def median_us(call: Callable[[], Any], iterations: int) -> float:
    call()  # first call pays lazy imports and allocations
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def in_process(names: list[str], states: dict[str, StateDir], iterations: int) -> None:
    print(f"\nin-process Predictor.run, median µs of {iterations} calls (golden rows)")
    print(f"{'model':<44} {'path':<9} {'1 row':>8} {'native':>8} {'x':>6} {'32 rows':>8} {'native':>8} {'x':>6}")
    for model in names:
        golden = states["native"].golden(model)
        rows = [row for case in golden for row in case["inputs"]]
        rows = (rows * 32)[:32]
        timings = {}
        for form in FORMS:
            run = predictor(states[form], model).run
            timings[form] = [median_us(lambda: run(rows[:size]), iterations) for size in (1, 32)]
        path = states["compiled"].build_record(model).serving_path
        (one_native, many_native), (one, many) = timings["native"], timings["compiled"]
        print(f"{model:<44} {path:<9} {one:>8.0f} {one_native:>8.0f} {one_native / one:>6.1f} {many:>8.0f} "
              f"{many_native:>8.0f} {many_native / many:>6.1f}", flush=True)


def served_figures(models: list[str], states: dict[str, StateDir], args: argparse.Namespace) -> None:
    print(f"\nserved (one process, its own venv), wrk -c1 {args.seconds:.0f} s x {args.repeats}, 1 row/request")
    print(f"{'model':<44} {'form':<9} {'idle MiB':>9} {'p50 ms':>7} {'p99 ms':>7} {'rps':>7} {'errors':>7}")
    logs = Path(tempfile.mkdtemp(prefix="bench-compiled-"))
    for model in models:
        for form in FORMS:
            state = states[form]
            record = state.build_record(model)
            body = json.dumps({"inputs": [state.golden(model)[0]["inputs"][0]]})
            os.environ["FACTORY_STATE"] = str(state.root)
            with served(record.bento_tag, logs / f"{model}-{form}.log", "single", bento_python(state, model)) as server:
                result = measure(f"{model} ({form})", server, "/predict", body, args)
            errors = sum(run.errors for run in result.runs)
            print(f"{model:<44} {record.serving_path:<9} {result.idle_mib:>9.0f} {result.p50:>7.2f} {result.p99:>7.2f} "
                  f"{result.rps:>7.0f} {errors:>7}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--served", nargs="*", default=list(SERVED), help="models to serve both ways (none: skip)")
    parser.add_argument("--work", type=Path, default=ROOT / "factory-state" / "bench-compiled")
    args = parser.parse_args()
    args.connections = 1
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    names, states = prepare(work)
    in_process(names, states, args.iterations)
    if args.served:
        served_figures(args.served, states, args)


if __name__ == "__main__":
    main()
