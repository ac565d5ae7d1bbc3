"""Golden predictions: requests drawn from the signature, answered by the registry's own pyfunc model.

Recorded at build time; the served Bento must later reproduce them (it loads the model natively,
so this is what proves the lean loader equals MLflow's).
"""

from __future__ import annotations

import warnings
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed

from factory import fuzz
from factory.registry import ResolvedModel
from factory.runtime import bento_module


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


def record_golden(resolved: ResolvedModel, batch_size: int, count: int = 12) -> tuple[list[dict], list[str], list]:
    """(cases, errors, non-finite rows): requests the registry's model raised on are left out and described
    instead, rows it answered NaN or infinity for are listed (recorded as null); both are model bugs that
    `factory test` will pin down to a minimal input."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(resolved.model_uri)
    inputs = resolved.signature["inputs"]
    values = bento_module("mf_inputs")
    cases, errors, non_finite = [], [], []
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
        outputs = _as_list(outputs)
        non_finite += [row for row, output in zip(rows, outputs) if not values.all_finite(output)]
        cases.append({"inputs": rows, "outputs": values.nulled(outputs)})
    return cases, errors, non_finite


def _frame(rows: list[Any], inputs: list[dict]) -> Any:
    inputs_module = bento_module("mf_inputs")  # the very frame the served model builds
    return inputs_module.tensor(rows, inputs) if inputs_module.is_tensor(inputs) else inputs_module.frame(rows, inputs)


def _as_list(outputs: Any) -> list:
    import numpy as np

    return np.asarray(outputs).tolist()
