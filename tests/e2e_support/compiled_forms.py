"""The registry model's answers and a compiled form served as the pod serves it, for the in-process tests of
factory/compiled.py (tests/test_compiled_*.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from factory.compiled import _runtime
from factory.golden import sample_requests
from factory.runtime import bento_module


def registry_answers(predict: Callable[[Any], Any], signature: dict) -> Callable[[list[dict]], list[dict]]:
    """The registry model's answers as golden.answerer gives them: the frame a served request makes (an optional
    integer column no row holds left out, as `mlflow models serve` leaves it), {"error"} where it raises."""
    values = bento_module("mf_inputs")

    def answer(requests: list[dict]) -> list[dict]:
        answered = []
        for request in requests:
            try:
                answered.append({"outputs": values.nulled(np.asarray(predict(
                    values.frame(request["inputs"], signature["inputs"]))).tolist())})
            except ValueError as exc:  # sklearn's: feature names missing, or check_array; a DMatrix's infinity
                answered.append({"error": f"ValueError: {' '.join(str(exc).split())[:200]}"})
        return answered
    return answer


def served_rows(flavor: dict, model_file: Path, rows: list[dict], signature: dict, guarded: bool = True) -> Any:
    """A compiled form (resolved.json's flavor, its ONNX file at `model_file`) run on `rows` as the pod runs it."""
    flavor = {**flavor, "model_file": str(model_file)}
    if not guarded:
        flavor.pop("guard")
    return _runtime().Predictor("", {"signature": signature, "flavor": flavor}).run(rows)


def golden_cases(answer: Callable[[list[dict]], list[dict]], signature: dict) -> list[dict]:
    """Golden cases as the build records them: twelve sampled requests of up to eight rows, with the registry model's
    outputs for those it answers (`answer`: registry_answers' or golden.answerer's)."""
    requests = sample_requests(signature, 12, 8)
    return [{**request, "outputs": reply["outputs"]} for request, reply in zip(requests, answer(requests))
            if "outputs" in reply]
