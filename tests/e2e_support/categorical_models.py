"""Register an sklearn pipeline whose OneHotEncoder keeps scikit-learn's default handle_unknown="error": the registry
model raises on any segment it was not fit on (tests/test_e2e_categorical.py).

Usage: python tests/e2e_support/categorical_models.py REGISTRY_DIR
"""

from __future__ import annotations

import importlib.metadata
import sys
import warnings
from pathlib import Path

MODEL = "categorical_onehot_strict"
SEGMENTS = ("PHV", "TAXI", "XL")


def register(registry: Path) -> None:
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"distance km": rng.gamma(2.0, 3.0, 300), "segment": rng.choice(SEGMENTS, 300)})
    score = frame["distance km"] * 0.3 + (frame["segment"] == "TAXI") * 1.5 + rng.normal(0, 1, 300)
    target = (score > 3).astype(int)
    encode = ColumnTransformer([("numeric", StandardScaler(), ["distance km"]),
                                ("segment", OneHotEncoder(), ["segment"])])
    pipeline = Pipeline([("encode", encode), ("classify", LogisticRegression())]).fit(frame, target)
    mlflow.set_tracking_uri(f"sqlite:///{registry.resolve() / 'mlflow.db'}")
    artifacts = (registry / "artifacts").resolve().as_uri()
    experiment = mlflow.get_experiment_by_name("model-factory-categorical") or mlflow.get_experiment(
        mlflow.create_experiment("model-factory-categorical", artifact_location=artifacts))
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=MODEL):
        # No input example: the categories come from the encoder alone.
        mlflow.sklearn.log_model(pipeline, name="model", signature=infer_signature(frame, target),
                                 registered_model_name=MODEL, serialization_format="cloudpickle",
                                 pip_requirements=[f"{name}=={importlib.metadata.version(name)}"
                                                   for name in ("scikit-learn", "cloudpickle", "pandas")])


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    register(Path(sys.argv[1]))
