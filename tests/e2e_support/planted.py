"""Register a model with a real-world bug: its encoder raises on a category it never saw in training.

The signature only says "string", so per-row validation cannot catch it; only fuzzing finds it.
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
        ("numeric", SimpleImputer(strategy="median"), [0, 1, 2, 5]),
        ("traffic", OneHotEncoder(handle_unknown="error"), [3]),  # the bug
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
