"""Per flavor: our served model (one process, its own venv, as the pod runs it) vs `mlflow models serve`
of the same registry version, side by side in one run: idle RSS and req/s at 16 connections.

Usage: python -m bench.flavors [--seconds 5] [--connections 16] [--repeats 2] [--work DIR]
Registers examples/flavors.py's models in DIR/registry (once), builds them, then serves each both ways.
wrk drives the load from core 0, the server runs on core 1, one worker each, one row per request.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import load_arguments, use_work_dir
from bench.serving import Measured, measure, mlflow_served
from factory.runtime import bento_python
from factory.serve import served
from factory.state import StateDir

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("flavor_sklearn_columns", "flavor_lightgbm", "flavor_xgboost", "flavor_tensor_pickle", "flavor_onnx",
          "flavor_onnx_classifier", "flavor_custom_pyfunc")


def prepare(work: Path) -> Path:
    """The flavor registry and a catalog of its working models, built (both reused on the next run)."""
    use_work_dir(work, lambda registry: subprocess.run([sys.executable, str(ROOT / "examples" / "flavors.py"),
                                                        str(registry)], check=True, capture_output=True))
    catalog = work / "models.yaml"
    catalog.write_text("models:\n" + "".join(f"  - {{name: {name}, version: 1, endpoint: {name.replace('_', '-')}}}\n"
                                             for name in MODELS))
    subprocess.run([sys.executable, "-m", "factory.cli", "build", "-f", str(catalog), *MODELS], cwd=ROOT, check=True)
    return catalog


def bench_model(model: str, state: StateDir, args: argparse.Namespace, logs: Path) -> tuple[Measured, Measured]:
    record = state.build_record(model)
    golden = state.golden(model, Path(record.golden))
    row = golden[0]["inputs"][0]
    with served(record.bento_tag, logs / f"{model}.log", "single", bento_python(state, model)) as server:
        ours = measure(f"{model} (factory)", server, "/predict", json.dumps({"inputs": [row]}), args)
    key = "instances" if isinstance(row, list) else "dataframe_records"
    with mlflow_served(f"models:/{model}/1", logs / f"{model}-mlflow.log") as server:
        theirs = measure(f"{model} (mlflow serve)", server, "/invocations", json.dumps({key: [row]}), args)
    return ours, theirs


def main() -> None:
    args = load_arguments(__doc__, "bench-flavors", 2)
    prepare(args.work.resolve())
    state = StateDir.from_env().activate()
    logs = Path(tempfile.mkdtemp(prefix="bench-flavors-"))
    print(f"wrk -c{args.connections}, {args.seconds:.0f} s x {args.repeats} (medians), 1 row/request, 1 worker each")
    print(f"{'model':<24} {'loader':<12} {'idle MiB':>9} {'mlflow':>7} {'rps':>7} {'mlflow':>7} {'rps x':>6} "
          f"{'errors':>7}")
    for model in MODELS:
        ours, theirs = bench_model(model, state, args, logs)
        loader = state.resolved(model).flavor["loader"]
        errors = sum(run.errors for run in ours.runs + theirs.runs)
        print(f"{model:<24} {loader:<12} {ours.idle_mib:>9.0f} {theirs.idle_mib:>7.0f} {ours.rps:>7.0f} "
              f"{theirs.rps:>7.0f} {ours.rps / theirs.rps:>6.2f} {errors:>7}", flush=True)


if __name__ == "__main__":
    main()
