"""Train the example models of models.yaml on synthetic ride-hailing data and register them in MLflow.

Usage: python examples/train.py [--registry DIR]   (default: ./registry, an sqlite-backed registry)

Deterministic (fixed seeds). Signatures deliberately differ: doubles only; integers, a string category,
a boolean and an optional column whose name is not a Python identifier; tree models that need
skops trusted types.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
TREE_TRUSTED_TYPES = ["numpy.dtype", "sklearn.tree._tree.Tree"]


@dataclass(frozen=True)
class Example:
    registered_name: str
    make_data: Callable[[np.random.Generator], tuple[pd.DataFrame, np.ndarray]]
    make_model: Callable[[], object]
    predict_fn: str = "predict"
    optional_columns: tuple[str, ...] = ()
    alias: str | None = None


def _match_data(city: int, segment: str, traffic_aware: bool):
    def make(rng: np.random.Generator):
        n = 600
        frame = pd.DataFrame({
            "distance_km": rng.gamma(2.0, 2.5, n),
            "hour_of_day": rng.integers(0, 24, n).astype("int64"),
            "drivers_nearby": rng.integers(0, 40, n).astype("int64"),
        })
        logit = 1.5 - 0.25 * frame["distance_km"] + 0.08 * frame["drivers_nearby"] + 0.1 * city
        logit += 0.3 if segment == "TAXI" else -0.2
        if traffic_aware:
            frame["traffic_level"] = rng.choice(["low", "medium", "high"], n)
            frame["is_airport"] = rng.random(n) < 0.1
            surge = rng.uniform(1.0, 2.5, n)
            surge[rng.random(n) < 0.2] = np.nan  # often unknown: an optional column
            frame["surge multiplier"] = surge
            logit -= frame["traffic_level"].map({"low": 0.0, "medium": 0.5, "high": 1.2}).to_numpy()
            logit -= 0.4 * np.nan_to_num(surge - 1.0)
        label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        return frame, label
    return make


def _traffic_aware_model():
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    # Positional columns: the served model gets a numpy row in signature order, not a DataFrame,
    # so it needs no pandas at serve time (~70 MiB less per model).
    numeric = [0, 1, 2, 5]
    encode = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("traffic", OneHotEncoder(handle_unknown="ignore"), [3]),
        ("airport", "passthrough", [4]),
    ])
    return make_pipeline(encode, LogisticRegression(max_iter=500))


def _logistic(regularisation: float = 1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=regularisation, max_iter=500))


def _eta_data(rng: np.random.Generator):
    n = 800
    frame = pd.DataFrame({"trip distance km": rng.gamma(2.0, 3.0, n), "mean speed kmh": rng.uniform(12, 60, n)})
    minutes = 60 * frame["trip distance km"] / frame["mean speed kmh"] + rng.normal(0, 1.5, n)
    return frame, minutes.to_numpy()


def _fare_data(rng: np.random.Generator):
    n = 800
    frame = pd.DataFrame({"distance_km": rng.gamma(2.0, 3.0, n), "duration_min": rng.uniform(3, 60, n),
                          "passengers": rng.integers(1, 5, n).astype("int64")})
    fare = 3.2 + 1.4 * frame["distance_km"] + 0.3 * frame["duration_min"] + rng.normal(0, 1.0, n)
    return frame, fare.to_numpy()


def _ridge():
    from sklearn.linear_model import Ridge

    return Ridge(alpha=1.0)


def _boosted_trees():
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=60, max_depth=3, random_state=0)


def examples() -> list[Example]:
    found = []
    for city in (2, 5):
        for segment in ("TAXI", "PHV"):
            found.append(Example(f"match_probability_{city}_{segment}_trafficunaware",
                                 _match_data(city, segment, False), _logistic, "predict_proba"))
    # Version 2 of one model, retrained with stronger regularisation: the A/B experiment's challenger.
    found.append(Example("match_probability_2_TAXI_trafficunaware", _match_data(2, "TAXI", False),
                         lambda: _logistic(regularisation=0.05), "predict_proba"))
    found.append(Example("match_probability_2_TAXI_trafficaware", _match_data(2, "TAXI", True),
                         _traffic_aware_model, "predict_proba", optional_columns=("surge multiplier",)))
    found.append(Example("eta_minutes_5_PHV", _eta_data, _ridge, alias="champion"))
    found.append(Example("fare_estimate_2_TAXI", _fare_data, _boosted_trees))
    return found


def tracking_uri(registry: Path) -> str:
    return f"sqlite:///{registry.resolve() / 'mlflow.db'}"


def _signature(frame: pd.DataFrame, output: np.ndarray, optional: tuple[str, ...]):
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema

    inferred = infer_signature(frame, output)
    columns = [ColSpec(col.type, col.name, required=col.name not in optional) for col in inferred.inputs.inputs]
    inferred.inputs = Schema(columns)
    return inferred


def register(example: Example, registry: Path, seed: int) -> int:
    import mlflow
    import sklearn

    rng = np.random.default_rng(seed)
    frame, target = example.make_data(rng)
    model = example.make_model()
    # Mixed columns stay objects so strings and NaN survive; all-numeric ones become one float array.
    features = frame.to_numpy(dtype=object) if example.optional_columns else frame.to_numpy()
    model.fit(features, target)
    output = getattr(model, example.predict_fn)(features[:5])
    experiment = mlflow.get_experiment_by_name("model-factory-examples")
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
        "model-factory-examples", artifact_location=(registry / "artifacts").resolve().as_uri())
    with mlflow.start_run(experiment_id=experiment_id, run_name=example.registered_name):
        info = mlflow.sklearn.log_model(
            model, name="model", signature=_signature(frame, output, example.optional_columns),
            serialization_format="skops", skops_trusted_types=TREE_TRUSTED_TYPES,
            pyfunc_predict_fn=example.predict_fn, registered_model_name=example.registered_name,
            input_example=frame.head(2), pip_requirements=[f"scikit-learn=={sklearn.__version__}", "skops"])
    version = int(info.registered_model_version)
    if example.alias:
        mlflow.MlflowClient().set_registered_model_alias(example.registered_name, example.alias, version)
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "registry")
    args = parser.parse_args(argv)
    args.registry.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Models are fit on positional numpy rows (what the served model receives); MLflow hands them a
    # DataFrame when inferring the signature, which makes sklearn warn about feature names.
    warnings.filterwarnings("ignore", message="X has feature names")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(args.registry))
    for seed, example in enumerate(examples()):
        version = register(example, args.registry, seed)
        alias = f" (alias {example.alias})" if example.alias else ""
        print(f"registered {example.registered_name} version {version}{alias}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
