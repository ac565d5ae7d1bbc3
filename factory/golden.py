"""Golden predictions: requests drawn from the signature, answered by the registry's own pyfunc model.

Recorded at build time; the served Bento must later reproduce them (it loads the model natively,
so this is what proves the lean loader equals MLflow's).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed

from factory import fuzz
from factory.registry import ResolvedModel

NUMERIC = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32", "boolean": "bool"}


def sample_requests(signature: dict, count: int, batch_size: int, seed: int = 0) -> list[dict]:
    """`count` valid request bodies, the same ones for the same signature and seed."""
    strategy = fuzz.valid_request(fuzz.signature_columns(signature), batch_size)
    drawn: list[dict] = []

    @fixed_seed(seed)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(request: dict) -> None:
        drawn.append(request)

    collect()
    return drawn[:count]


def record_golden(resolved: ResolvedModel, batch_size: int, count: int = 12) -> tuple[list[dict], list[str]]:
    """(cases, errors): requests the registry's model raised on are left out and described instead;
    they are model bugs that `factory test` will pin down to a minimal input."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(resolved.model_uri)
    inputs = resolved.signature["inputs"]
    cases, errors = [], []
    for request in sample_requests(resolved.signature, count, batch_size):
        rows = request["inputs"]
        try:
            with warnings.catch_warnings():
                # pyfunc hands sklearn a DataFrame; a model fit on plain arrays warns about names, harmlessly.
                warnings.filterwarnings("ignore", message="X has feature names")
                outputs = model.predict(_frame(rows, inputs))
        except Exception as exc:  # the registry model's own failure, whatever its type
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            continue
        cases.append({"inputs": rows, "outputs": [_plain(value) for value in _as_list(outputs)]})
    return cases, errors


def _frame(rows: list[Any], inputs: list[dict]) -> Any:
    import numpy as np
    import pandas as pd

    if inputs and inputs[0].get("type") == "tensor":
        return np.asarray(rows, dtype=inputs[0]["tensor-spec"]["dtype"])
    names = [spec["name"] for spec in inputs]
    frame = pd.DataFrame([{name: row.get(name) for name in names} for row in rows], columns=names)
    for spec in inputs:
        kind = spec["type"]
        if kind in ("double", "float"):
            frame[spec["name"]] = frame[spec["name"]].astype(NUMERIC[kind])
        elif kind in NUMERIC and frame[spec["name"]].notna().all():
            frame[spec["name"]] = frame[spec["name"]].astype(NUMERIC[kind])
    return frame


def _as_list(outputs: Any) -> list:
    import numpy as np

    return np.asarray(outputs).tolist()


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
