"""Register a model with a real-world bug: it one-hot encodes the hour of day, and its encoder raises on an hour it
never saw in training (24, -1, 1e6).

The signature only says "long", so per-row validation cannot catch it; only fuzzing finds it. (A string column
encoded so is a categorical column the build finds and the pod refuses other values of: factory/categorical.py.)
Run as a script: python planted.py REGISTRY_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLANTED_MODEL = "crashy_match_probability"


def _strict_encoder_model():
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = ColumnTransformer([
        ("numeric", SimpleImputer(strategy="median"), [0, 2, 5]),
        ("hour", OneHotEncoder(handle_unknown="error"), [1]),  # the bug
        ("traffic", OneHotEncoder(handle_unknown="ignore"), [3]),
        ("airport", "passthrough", [4]),
    ])
    return make_pipeline(encode, LogisticRegression(max_iter=500))


def register_planted(registry: Path) -> None:
    import mlflow
    from factory_env import example_module  # run as a script from this folder

    train = example_module("train")
    mlflow.set_tracking_uri(train.tracking_uri(registry))
    example = train.Example(PLANTED_MODEL, train._match_data(2, "TAXI", True), _strict_encoder_model,
                            "predict_proba", optional_columns=("surge multiplier",))
    train.register(example, registry, seed=7)


if __name__ == "__main__":
    register_planted(Path(sys.argv[1]))
