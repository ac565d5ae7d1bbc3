"""scikit-learn models skl2onnx 1.20 converted to float32 alone, or not at all (factory/onnx_double.py): each served
natively before, found by converting models nobody here trained. Each now compiles in double and answers 2,000
ordinary rows as the registry model does, to a double's rounding. In-process models, served through the pod's
Predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from e2e_support.compiled_forms import golden_cases, registry_answers, served_rows

from factory.catalog import Compile
from factory.compiled import COMPILED_FILE, decide
from factory.exactness import compare

NUMBERS = {"inputs": [{"type": "double", "name": "distance km", "required": True},
                      {"type": "long", "name": "hour", "required": True},
                      {"type": "double", "name": "surge", "required": True}]}
MIXED = {"inputs": [*NUMBERS["inputs"], {"type": "string", "name": "vehicle", "required": True}]}
# A double computes these models' answers to ~1e-15 relative; float32 arithmetic anywhere in the graph, to ~1e-7.
DOUBLE_ROUNDING = 1e-12


def _table(rows: int, seed: int) -> tuple[Any, Any]:
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"distance km": np.round(rng.gamma(2.0, 3.0, rows), 2), "hour": rng.integers(0, 24, rows),
                          "surge": np.round(rng.uniform(1.0, 3.0, rows), 1),
                          "vehicle": rng.choice(["sedan", "suv", "van"], rows)})
    minutes = 2.1 * frame["distance km"] * frame["surge"] + 3 * np.sin(frame["hour"] / 4) + rng.normal(0, 1, rows)
    return frame, minutes - minutes.median()


def _fitted(kind: str, frame: Any, target: Any) -> tuple[Any, dict, str]:
    """The model, its signature, and the method the registry model answers with."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier, SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures, StandardScaler, TargetEncoder
    from sklearn.svm import LinearSVC

    numbers, labels, classes = frame.drop(columns="vehicle"), target > 0, np.digitize(target, [-5, 5])
    encoded_first = ColumnTransformer([("vehicle", OneHotEncoder(drop="first", handle_unknown="ignore"), ["vehicle"])],
                                      remainder="passthrough")
    fitted = {
        "StandardScaler + LinearSVC": (lambda: make_pipeline(StandardScaler(), LinearSVC()).fit(numbers, labels),
                                       NUMBERS, "predict"),
        "LinearSVC": (lambda: LinearSVC().fit(numbers, labels), NUMBERS, "predict"),
        "StandardScaler + RidgeClassifier, three string classes": (
            lambda: make_pipeline(StandardScaler(), RidgeClassifier()).fit(
                numbers, np.array(["short", "usual", "long"])[classes]), NUMBERS, "predict"),
        "StandardScaler + SGDClassifier (hinge)": (
            lambda: make_pipeline(StandardScaler(), SGDClassifier(random_state=0)).fit(numbers, labels), NUMBERS,
            "predict"),
        "PolynomialFeatures + Ridge": (lambda: make_pipeline(PolynomialFeatures(2), Ridge()).fit(numbers, target),
                                       NUMBERS, "predict"),
        "OneHotEncoder first + StandardScaler + LogisticRegression": (
            lambda: make_pipeline(encoded_first, StandardScaler(), LogisticRegression()).fit(frame, labels), MIXED,
            "predict_proba"),
        "TargetEncoder + Ridge": (lambda: make_pipeline(ColumnTransformer(
            [("vehicle", TargetEncoder(random_state=0), ["vehicle"])], remainder="passthrough"), Ridge()).fit(
                frame, target), MIXED, "predict"),
    }[kind]
    return fitted[0](), fitted[1], fitted[2]


@pytest.mark.parametrize("kind", [
    "StandardScaler + LinearSVC",  # was: LinearSVC refused the zipmap option skl2onnx's pipeline parser gives it
    "LinearSVC",  # was: "post_transform 'NONE' is not supported with double"
    "StandardScaler + RidgeClassifier, three string classes",  # was: the same
    "StandardScaler + SGDClassifier (hinge)",  # was: a ZipMap over its double scores, which onnxruntime refuses
    "PolynomialFeatures + Ridge",  # was: a float32 bias column concatenated with double products
    # was: declared float32 behind the ColumnTransformer (its first part's type), so the scaler's double output did
    # not load, and the classifier took its float32 node
    "OneHotEncoder first + StandardScaler + LogisticRegression",
    # was: each category's encoding as float32, so an answer near zero 4e-06 relative off on 2 of 2,000 ordinary rows,
    # and served compiled: every row the build checked agreed
    "TargetEncoder + Ridge",
])
def test_models_skl2onnx_left_in_float32_compile_in_double(kind: str, tmp_path: Path) -> None:
    frame, target = _table(2000, seed=1)
    model, signature, predict_fn = _fitted(kind, frame, target)
    answer = registry_answers(getattr(model, predict_fn), signature)
    cases = golden_cases(answer, signature)
    columns = [spec["name"] for spec in signature["inputs"]]
    decision = decide(lambda: model, {"loader": "cloudpickle", "predict_fn": predict_fn}, signature, cases, Compile(),
                      tmp_path / COMPILED_FILE, answer, frame[columns].head(16).to_dict("records"))
    assert decision.compiled and decision.flavor["precision"] == "float64", decision.reason
    # Declared as computed: a binary LinearSVC's scores declared one column and computed as two made onnxruntime
    # warn at every load of the pod.
    onnx.shape_inference.infer_shapes(onnx.load(tmp_path / COMPILED_FILE), check_type=True, strict_mode=True)
    ordinary, _ = _table(2000, seed=2)
    rows = ordinary[columns].to_dict("records")
    served = served_rows(decision.flavor, tmp_path / COMPILED_FILE, rows, signature)
    outcome = compare(answer([{"inputs": rows}])[0]["outputs"], served, DOUBLE_ROUNDING, 0.0)
    assert outcome.agrees, outcome.describe(rows)
