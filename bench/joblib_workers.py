"""A scikit-learn forest fit with n_jobs=-1, served natively: joblib bounded by the service (LOKY_MAX_CPU_COUNT from
resources.cpu) vs joblib seeing every core, side by side in one run, interleaved.

Usage: python -m bench.joblib_workers [--seconds 5] [--connections 16] [--repeats 3] [--work DIR]
Logs a 200-tree RandomForestClassifier (n_jobs=-1, as its author fit it) in DIR/registry and builds it with
compile.enabled false, then serves its Bento, unpinned as a pod without a CPU limit runs (wrk on core 0), once with
LOKY_MAX_CPU_COUNT preset to this machine's core count (what joblib saw before the service bounded it; a value the
environment sets wins) and once as rendered (1 for the default 500m), one row per request.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import load_arguments, use_work_dir
from bench.wrk import WrkResult, run_wrk
from factory.runtime import bento_python
from factory.serve import served
from factory.state import StateDir

ROOT = Path(__file__).resolve().parent.parent
MODEL = "forest_n_jobs"
REGISTER = f"""
import numpy as np, pandas as pd, mlflow, mlflow.sklearn, sys
from mlflow.models import infer_signature
from sklearn.ensemble import RandomForestClassifier
mlflow.set_tracking_uri(sys.argv[1])
rng = np.random.default_rng(3)
X = pd.DataFrame({{"a": rng.normal(0, 1, 800), "b": rng.uniform(0, 10, 800), "c": rng.integers(0, 5, 800) * 1.0}})
y = ((X.a + rng.normal(0, 1, 800)) > 0).astype(int)
forest = RandomForestClassifier(200, max_depth=6, n_jobs=-1, random_state=0).fit(X, y)
mlflow.sklearn.log_model(forest, name="model", registered_model_name="{MODEL}", serialization_format="cloudpickle",
                         signature=infer_signature(X, forest.predict(X)))
"""


def prepare(work: Path) -> None:
    use_work_dir(work, lambda registry: subprocess.run(
        [sys.executable, "-c", REGISTER, os.environ["MLFLOW_TRACKING_URI"]], cwd=registry, check=True,
        capture_output=True))
    catalog = work / "models.yaml"
    catalog.write_text(f"models:\n  - {{name: {MODEL}, version: 1, endpoint: forest, compile: {{enabled: false}}}}\n")
    subprocess.run([sys.executable, "-m", "factory.cli", "build", "-f", str(catalog), MODEL, "--no-image"], cwd=ROOT,
                   check=True)


def main() -> None:
    args = load_arguments(__doc__, "bench-joblib", 3)
    prepare(args.work.resolve())
    state = StateDir.from_env().activate()
    record = state.build_record(MODEL)
    body = json.dumps({"inputs": [state.golden(MODEL, Path(record.golden))[0]["inputs"][0]]})
    logs = Path(tempfile.mkdtemp(prefix="bench-joblib-"))
    sides = {f"every core (LOKY_MAX_CPU_COUNT={os.cpu_count()})": str(os.cpu_count()), "bounded (as rendered)": None}
    runs: dict[str, list[WrkResult]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        for name, preset in sides.items():
            if preset is None:
                os.environ.pop("LOKY_MAX_CPU_COUNT", None)
            else:
                os.environ["LOKY_MAX_CPU_COUNT"] = preset
            with served(record.bento_tag, logs / f"{repeat}-{len(runs[name])}.log", "single",
                        bento_python(state, MODEL)) as server:
                run_wrk(server.url + "/predict", body, 1, args.connections)  # warm-up, not counted
                runs[name].append(run_wrk(server.url + "/predict", body, args.seconds, args.connections))
    os.environ.pop("LOKY_MAX_CPU_COUNT", None)
    print(f"wrk -c{args.connections} on core 0, {args.seconds:.0f} s x {args.repeats} interleaved (medians), "
          "1 row/request")
    print(f"{'joblib':<34} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'rps x':>6} {'errors':>7}")
    baseline = statistics.median(run.rps for run in next(iter(runs.values())))
    for name, results in runs.items():
        rps = statistics.median(run.rps for run in results)
        print(f"{name:<34} {rps:>7.0f} {statistics.median(run.p50_ms for run in results):>7.1f} "
              f"{statistics.median(run.p99_ms for run in results):>7.1f} {rps / baseline:>6.2f} "
              f"{sum(run.errors for run in results):>7}")


if __name__ == "__main__":
    main()
