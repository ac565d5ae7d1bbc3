"""The compiled form is also checked where conversions go silently wrong: near the split thresholds of its trees
and on the model's logged input example (factory/probes.py), answered by the registry model. In-process models,
fit in milliseconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from factory import golden, probes
from factory.catalog import Compile
from factory.compiled import COMPILED_FILE, decide
from factory.golden import sample_requests
from factory.runtime import bento_module

DOUBLES = {"inputs": [{"type": "double", "name": "price", "required": True},
                      {"type": "long", "name": "hour", "required": True}]}
XGBOOST = {"loader": "xgboost", "predict_fn": "predict"}


def _answers(predict):
    """The registry model's answers as golden.answerer gives them: one {"outputs"} per request."""
    values = bento_module("mf_inputs")
    return lambda requests: [{"outputs": np.asarray(predict(values.array(request["inputs"], DOUBLES["inputs"])))
                              .tolist()} for request in requests]


def _golden_cases(predict) -> list[dict]:
    answer = _answers(predict)
    return [{**request, "outputs": answer([request])[0]["outputs"]} for request in sample_requests(DOUBLES, 12, 8)]


def _priced_model():
    """An XGBoost regressor fit on prices with cents, as business data holds them."""
    from xgboost import XGBRegressor

    generator = np.random.default_rng(3)
    matrix = np.c_[np.round(generator.uniform(0, 50, 300), 2), generator.integers(0, 24, 300)]
    return XGBRegressor(n_estimators=20, max_depth=3).fit(matrix, matrix[:, 0] * 0.7 + np.sin(matrix[:, 1])), matrix


def test_a_conversion_wrong_only_near_split_thresholds_is_caught_there(tmp_path: Path) -> None:
    """The float64 ONNX form of an XGBoost model agrees on every golden row and answers prices the model was fit on
    differently (XGBoost compares float32 inputs): the golden rows alone served it."""
    model, matrix = _priced_model()
    cases = _golden_cases(model.predict)
    loose = Compile(rtol=1e-4)
    golden_only = decide(lambda: model, XGBOOST, DOUBLES, cases, loose, tmp_path / COMPILED_FILE)
    assert golden_only.flavor["precision"] == "float64", golden_only.reason
    predictor = bento_module("mf_runtime").Predictor("", {"signature": DOUBLES, "flavor": {
        **golden_only.flavor, "model_file": str(tmp_path / COMPILED_FILE)}})
    realistic = [{"price": float(price), "hour": int(hour)} for price, hour in matrix]
    served = np.asarray(predictor.run(realistic))
    assert (np.abs(served - model.predict(matrix)) > 1e-3).any()  # the silent wrong answer, on training rows

    probed = decide(lambda: model, XGBOOST, DOUBLES, cases, loose, tmp_path / COMPILED_FILE, _answers(model.predict))
    assert probed.flavor["precision"] == "float32", probed.reason
    assert probed.reason.startswith("ONNX float32 reproduces the registry model on 84 golden rows and 1024 rows near "
                                    "its split thresholds (max relative error ")
    assert len(probed.probes) == probes.MAX_ROWS

    # between the float64 form's error on golden rows (2.7e-06) and the float32 form's (7.2e-06)
    strict = decide(lambda: model, XGBOOST, DOUBLES, cases, Compile(rtol=5e-6), tmp_path / COMPILED_FILE,
                    _answers(model.predict))
    assert strict.path == "native" and not (tmp_path / COMPILED_FILE).exists()
    assert strict.reason.startswith("no exact compiled form: ONNX float64 differs from the registry model beyond rtol "
                                    "5e-06, atol 0 near its split thresholds (the golden rows agree): max relative "
                                    "error "), strict.reason
    assert len(strict.probes) == probes.MAX_ROWS  # kept for golden.json: `factory test` asks the native model them


def test_thresholds_are_read_per_request_column_and_probed_on_both_sides(tmp_path: Path) -> None:
    model, _ = _priced_model()
    decision = decide(lambda: model, XGBOOST, DOUBLES, _golden_cases(model.predict), Compile(rtol=1e-4),
                      tmp_path / COMPILED_FILE)
    found = probes.thresholds((tmp_path / COMPILED_FILE).read_bytes(), decision.flavor["feeds"])
    assert sorted(found) == [0, 1] and all(0 < value < 50 for value in found[0])
    rows = probes.rows((tmp_path / COMPILED_FILE).read_bytes(), decision.flavor["feeds"], DOUBLES,
                       [{"price": 1.5, "hour": 3}])
    assert len(rows) == probes.MAX_ROWS and all(sorted(row) == ["hour", "price"] for row in rows)
    assert all(isinstance(row["hour"], int) and isinstance(row["price"], float) for row in rows)  # typed per column
    assert {value for threshold in found[0] for value in probes.near(threshold)} <= {row["price"] for row in rows}


@pytest.mark.parametrize("threshold, expected", [
    # XGBoost splits at float32(3.67); a client sends the double 3.67, just below it
    (float(np.float32(3.67)), {3.67, float(np.float32(3.67)), math.nextafter(float(np.float32(3.67)), 0),
                               math.nextafter(float(np.float32(3.67)), 4), float(np.nextafter(np.float32(3.67), 0)),
                               float(np.nextafter(np.float32(3.67), np.float32(4)))}),
    # LightGBM splits at a double just above 13.33; its float32 form is below it
    (13.330000000000002, {13.330000000000002, 13.33, 13.330000000000004, float(np.float32(13.33)),
                          float(np.nextafter(np.float32(13.33), 0)),
                          float(np.nextafter(np.float32(13.33), np.float32(14)))}),
    (2.0, {2.0, math.nextafter(2.0, 0), math.nextafter(2.0, 3), float(np.nextafter(np.float32(2), 0)),
           float(np.nextafter(np.float32(2), np.float32(3)))}),
])
def test_values_near_a_threshold(threshold, expected) -> None:
    assert set(probes.near(threshold)) == expected


def test_no_trees_or_no_base_rows_probe_nothing(tmp_path: Path) -> None:
    from sklearn.linear_model import Ridge

    model = Ridge().fit(np.c_[np.arange(10.0), np.arange(10)], np.arange(10.0))
    decision = decide(lambda: model, {"loader": "skops"}, DOUBLES, _golden_cases(model.predict), Compile(),
                      tmp_path / COMPILED_FILE, _answers(model.predict))
    assert decision.compiled and decision.probes == ()
    assert probes.rows((tmp_path / COMPILED_FILE).read_bytes(), decision.flavor["feeds"], DOUBLES, []) == []


def test_the_logged_input_example_is_probed_and_its_rows_kept(tmp_path: Path) -> None:
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge

    frame = pd.DataFrame({"price": [1.25, 2.5, np.nan, 4.0], "hour": [1, 2, 3, 4]})
    model = Ridge().fit(frame.fillna(0.0).to_numpy(), [1.0, 2.0, 3.0, 4.0])
    mlflow.sklearn.save_model(model, tmp_path / "m", signature=infer_signature(frame, np.arange(4.0)),
                              input_example=frame, pip_requirements=["scikit-learn"],
                              serialization_format="cloudpickle")
    signature = {"inputs": [{"type": "double", "name": "price", "required": True},
                            {"type": "long", "name": "hour", "required": True}]}
    examples = probes.example_rows(tmp_path / "m", signature)
    # the row with a NaN is left out: a request cannot carry one
    assert examples == [{"price": 1.25, "hour": 1}, {"price": 2.5, "hour": 2}, {"price": 4.0, "hour": 4}]
    decision = decide(lambda: model, {"loader": "cloudpickle"}, signature, _golden_cases(model.predict), Compile(),
                      tmp_path / COMPILED_FILE, _answers(model.predict), examples)
    assert decision.reason.startswith("ONNX float64 reproduces the registry model on 84 golden rows and 3 rows of its "
                                      "logged input example (max relative error ")
    assert [row for row, _ in decision.probes] == examples
    mlflow.sklearn.save_model(model, tmp_path / "bare", pip_requirements=["scikit-learn"])
    assert probes.example_rows(tmp_path / "bare", signature) == []


def test_probed_rows_join_golden_json_in_requests_of_the_batch_size(tmp_path: Path) -> None:
    path = tmp_path / "golden.json"
    cases = [{"inputs": [{"x": 1.0}], "outputs": [2.0]}]
    pairs = [({"x": float(index)}, float(index) * 2) for index in range(5)]
    written = golden.extend(path, cases, pairs, 2)
    assert json.loads(path.read_text()) == written
    assert [len(case["inputs"]) for case in written] == [1, 2, 2, 1]
    assert written[1] == {"inputs": [{"x": 0.0}, {"x": 1.0}], "outputs": [0.0, 2.0]}


@pytest.mark.parametrize("features, path", [
    ("integer", "compiled"),  # splits at x.5: float32 holds them exactly
    ("cents", "native"),  # splits between prices with cents: double thresholds the converter stores as float32
])
def test_a_lightgbm_model_compiles_only_where_its_thresholds_survive_float32(features, path, tmp_path: Path) -> None:
    import lightgbm

    generator = np.random.default_rng(5)
    first = generator.integers(0, 50, 300).astype(float)
    if features == "cents":
        first = np.round(generator.uniform(0, 50, 300), 2)
    matrix = np.c_[first, generator.integers(0, 24, 300)]
    model = lightgbm.train({"objective": "regression", "verbose": -1, "num_leaves": 8},
                           lightgbm.Dataset(matrix, matrix[:, 0] * 0.7 + np.sin(matrix[:, 1])), 20)
    decision = decide(lambda: model, {"loader": "lightgbm", "predict_fn": "predict"}, DOUBLES,
                      _golden_cases(model.predict), Compile(), tmp_path / COMPILED_FILE, _answers(model.predict))
    assert decision.path == path, decision.reason
    assert len(decision.probes) == probes.MAX_ROWS
    if path == "native":
        assert "near its split thresholds (the golden rows agree)" in decision.reason
