"""The compiled form is also checked where conversions go silently wrong: near the split thresholds of its trees
and on the model's logged input example (factory/probes.py), answered by the registry model. In-process models,
fit in milliseconds."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from e2e_support.compiled_forms import golden_cases

from factory import golden, onnx_columns, onnx_convert, probes
from factory.catalog import Compile
from factory.compiled import COMPILED_FILE, decide
from factory.runtime import bento_module

DOUBLES = {"inputs": [{"type": "double", "name": "price", "required": True},
                      {"type": "long", "name": "hour", "required": True}]}
XGBOOST = {"loader": "xgboost", "predict_fn": "predict"}
LIGHTGBM = {"loader": "lightgbm", "predict_fn": "predict"}


def _answers(predict, signature: dict = DOUBLES):
    """The registry model's answers as golden.answerer gives them: one {"outputs"} per request."""
    values = bento_module("mf_inputs")
    return lambda requests: [{"outputs": np.asarray(predict(values.array(request["inputs"], signature["inputs"])))
                              .tolist()} for request in requests]


def _golden_cases(predict) -> list[dict]:
    answer = _answers(predict)
    return golden_cases(answer, DOUBLES)


def _priced_model():
    """An XGBoost regressor fit on prices with cents, as business data holds them."""
    from xgboost import XGBRegressor

    generator = np.random.default_rng(3)
    matrix = np.c_[np.round(generator.uniform(0, 50, 300), 2), generator.integers(0, 24, 300)]
    return XGBRegressor(n_estimators=20, max_depth=3).fit(matrix, matrix[:, 0] * 0.7 + np.sin(matrix[:, 1])), matrix


def _lightgbm_model(features: str = "cents"):
    """A LightGBM model fit on prices with cents, as business data holds them (it splits between them, at doubles
    float32 does not hold), or on whole prices (it splits at x.5, which float32 holds)."""
    import lightgbm

    generator = np.random.default_rng(5)
    first = generator.integers(0, 50, 300).astype(float)
    if features == "cents":
        first = np.round(generator.uniform(0, 50, 300), 2)
    matrix = np.c_[first, generator.integers(0, 24, 300)]
    return lightgbm.train({"objective": "regression", "verbose": -1, "num_leaves": 8},
                          lightgbm.Dataset(matrix, matrix[:, 0] * 0.7 + np.sin(matrix[:, 1])), 20), matrix


def test_a_conversion_wrong_only_near_split_thresholds_is_caught_there(tmp_path: Path, monkeypatch) -> None:
    """The float32 ONNX form of a LightGBM model agrees on every golden row and answers prices between two the model
    was fit on (25.265, where it splits) differently (LightGBM compares doubles): the golden rows alone served it.
    (Its double form is exact.)"""
    monkeypatch.setattr(onnx_convert, "PRECISIONS", ("float32",))
    model, _ = _lightgbm_model()
    cases = _golden_cases(model.predict)
    golden_only = decide(lambda: model, LIGHTGBM, DOUBLES, cases, Compile(), tmp_path / COMPILED_FILE)
    assert golden_only.flavor["precision"] == "float32", golden_only.reason
    predictor = bento_module("mf_runtime").Predictor("", {"signature": DOUBLES, "flavor": {
        **golden_only.flavor, "model_file": str(tmp_path / COMPILED_FILE)}})
    near = probes.rows((tmp_path / COMPILED_FILE).read_bytes(), golden_only.flavor["feeds"], DOUBLES,
                       [{"price": 1.5, "hour": 3}])
    served = np.asarray(predictor.run(near))
    sent = np.array([[row["price"], row["hour"]] for row in near])
    assert (np.abs(served - model.predict(sent)) > 1e-3).any()  # the silent wrong answer, on prices a client sends

    probed = decide(lambda: model, LIGHTGBM, DOUBLES, cases, Compile(), tmp_path / COMPILED_FILE,
                    _answers(model.predict))
    assert probed.path == "native" and not (tmp_path / COMPILED_FILE).exists()
    assert probed.reason.startswith("no exact compiled form: ONNX float32 differs from the registry model beyond rtol "
                                    "1e-06, atol 0 near its split thresholds (the golden rows agree): max relative "
                                    "error "), probed.reason
    assert len(probed.probes) == probes.MAX_ROWS  # kept for golden.json: `factory test` asks the native model them


def test_thresholds_are_read_per_request_column_and_probed_on_both_sides(tmp_path: Path) -> None:
    model, _ = _priced_model()
    decision = decide(lambda: model, XGBOOST, DOUBLES, _golden_cases(model.predict), Compile(rtol=1e-4),
                      tmp_path / COMPILED_FILE)
    found = onnx_columns.thresholds((tmp_path / COMPILED_FILE).read_bytes(), decision.flavor["feeds"], DOUBLES)
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
                                      "logged input example and 1024 rows around its logged input example and 9 rows "
                                      "of extreme values (max relative error ")
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


@pytest.mark.parametrize("features, compiled", [
    ("integer", True),  # splits at x.5: float32 holds them exactly
    ("cents", False),  # splits between prices with cents: double thresholds the converter stores as float32
])
def test_a_lightgbm_model_compiles_in_double_where_its_float32_thresholds_differ(features, compiled, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """Its float32 form compiles only where the thresholds survive float32, which the probes find out; its double
    form (factory/onnx_boosters.py) compiles either way."""
    model, _ = _lightgbm_model(features)
    decision = decide(lambda: model, LIGHTGBM, DOUBLES, _golden_cases(model.predict), Compile(),
                      tmp_path / COMPILED_FILE, _answers(model.predict))
    assert decision.compiled and decision.flavor["precision"] == "float64", decision.reason
    assert len(decision.probes) == probes.MAX_ROWS
    monkeypatch.setattr(onnx_convert, "PRECISIONS", ("float32",))
    decision = decide(lambda: model, LIGHTGBM, DOUBLES, _golden_cases(model.predict), Compile(),
                      tmp_path / COMPILED_FILE, _answers(model.predict))
    assert decision.compiled is compiled, decision.reason


MIXED = {"inputs": [{"type": "double", "name": "price", "required": True},
                    {"type": "long", "name": "hour", "required": True},
                    {"type": "string", "name": "city", "required": True}]}


def _mixed(n: int = 400):
    import pandas as pd

    generator = np.random.default_rng(8)
    frame = pd.DataFrame({"price": np.round(generator.uniform(1, 200, n), 2), "hour": generator.integers(0, 24, n),
                          "city": generator.choice(["Oslo", "Rome", "Lima", "Kyiv"], n)})
    return frame, frame.price * 0.3 + np.sin(frame.hour) * 5 + (frame.city == "Rome") * 7.0


def _mixed_answers(predict):
    """As golden.answerer: {"error"} for a request the model raises on (an extreme value beyond float32)."""
    values = bento_module("mf_inputs")

    def answer(requests: list[dict]) -> list[dict]:
        answered = []
        for request in requests:
            try:
                answered.append({"outputs": np.asarray(predict(values.frame(request["inputs"], MIXED["inputs"])))
                                 .tolist()})
            except ValueError as exc:
                answered.append({"error": str(exc)})
        return answered
    return answer


def _mixed_decision(model, tmp_path: Path, probed: bool):
    answer = _mixed_answers(model.predict)
    cases = golden_cases(answer, MIXED)
    example = [{"price": 1.5, "hour": 0, "city": "Oslo"}, {"price": 199.99, "hour": 23, "city": "Rome"}]
    return decide(lambda: model, {"loader": "cloudpickle", "predict_fn": "predict"}, MIXED, cases, Compile(),
                  tmp_path / COMPILED_FILE, answer if probed else None, example if probed else ())


def test_a_tree_behind_a_column_transformer_is_probed_at_its_passed_through_columns(tmp_path: Path) -> None:
    """Encoded categories beside numbers passed through: the tree reads a concatenation, not a graph input, so its
    thresholds went unprobed (a float64 form comparing double inputs where sklearn compares float32 once served so)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OrdinalEncoder
    from sklearn.tree import DecisionTreeRegressor

    frame, target = _mixed()
    encode = ColumnTransformer([("city", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                                 ["city"]), ("numbers", "passthrough", ["price", "hour"])])
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(encode, DecisionTreeRegressor(random_state=0)).fit(frame, target)
    probed = _mixed_decision(model, tmp_path, probed=True)
    assert probed.reason.startswith("ONNX float64 reproduces the registry model on 71 golden rows and 1024 rows near "
                                    "its split thresholds and at its encoders' categories and 2 rows of its logged "
                                    "input example and 1024 rows around its logged input example and 9 rows of "
                                    "extreme values (max relative error "), probed.reason
    onnx_bytes = (tmp_path / COMPILED_FILE).read_bytes()
    found = onnx_columns.thresholds(onnx_bytes, probed.flavor["feeds"], MIXED)
    # price and hour; the city's codes are the encoder's, no request value
    assert sorted(found) == [0, 1] and all(1 <= value <= 200 for value in found[0])
    assert onnx_columns.categories(onnx_bytes, probed.flavor["feeds"], MIXED) == {2: ["Kyiv", "Lima", "Oslo", "Rome"]}
    predictor = bento_module("mf_runtime").Predictor("", {"signature": MIXED, "flavor": {
        **probed.flavor, "model_file": str(tmp_path / COMPILED_FILE)}})
    near = [{"price": value, "hour": 3, "city": "Oslo"} for threshold in found[0] for value in probes.near(threshold)]
    expected = model.predict(bento_module("mf_inputs").frame(near, MIXED["inputs"]))
    assert np.allclose(np.asarray(predictor.run(near)).ravel(), expected, rtol=1e-6, atol=0)


def test_an_encoders_categories_are_probed(tmp_path: Path, monkeypatch) -> None:
    """TargetEncoder's encodings are float32 constants in its float32 form (and were in its double form too, until
    factory/onnx_double.py). Golden rows hold made-up cities, which all get the mean, beside numbers up to 1e12 that
    drown the rounding; ordinary rows of known cities whose answer is near zero show it (the stranger sweep: 17 of
    2,000 realistic rows beyond 1e-06, every golden row within)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler, TargetEncoder

    frame, _ = _mixed()
    noise = np.random.default_rng(3).normal(0, 3, len(frame))
    target = frame.city.map({"Oslo": 40.123, "Rome": -10.456, "Lima": 20.789, "Kyiv": 60.3}) - frame.price * 0.4 + noise
    encode = ColumnTransformer([("city", TargetEncoder(random_state=0), ["city"]),
                                ("numbers", StandardScaler(), ["price", "hour"])])
    model = make_pipeline(encode, Ridge()).fit(frame, target)
    monkeypatch.setattr(onnx_convert, "PRECISIONS", ("float32",))
    assert _mixed_decision(model, tmp_path, probed=False).compiled
    decision = _mixed_decision(model, tmp_path, probed=True)
    assert decision.path == "native", decision.reason
    assert decision.reason.startswith(
        "no exact compiled form: ONNX float32 differs from the registry model beyond rtol 1e-06, atol 0 at its "
        "encoders' categories or on its logged input example or around its logged input example (the golden rows "
        "agree): max relative error "), decision.reason


def test_rows_around_the_logged_example_are_drawn_like_its_values() -> None:
    signature = {"inputs": [*MIXED["inputs"], {"type": "float", "name": "ratio", "required": True}]}
    example = [{"price": 3.25, "hour": 7, "city": "Oslo", "ratio": 0.5}, {"price": 80.1, "hour": 20, "city": "Rome",
                                                                            "ratio": 0.5}]
    rows = probes.around(signature, example)
    assert len(rows) == probes.AROUND_ROWS == 1024 and rows == probes.around(signature, example)  # seeded
    assert all(3.25 <= row["price"] <= 80.1 and round(row["price"], 2) == row["price"] for row in rows)  # cents
    assert {row["hour"] for row in rows} == set(range(7, 21)) and {row["city"] for row in rows} == {"Oslo", "Rome"}
    assert all(0.25 <= row["ratio"] <= 0.75 and float(np.float32(row["ratio"])) == row["ratio"] for row in rows)
    assert probes.around(signature, []) == [] and probes.around(signature, [{"price": None}]) == []


RATIOS = {"inputs": [{"type": "double", "name": "ratio", "required": True},
                     {"type": "long", "name": "hour", "required": True}]}


def test_a_binarizers_threshold_is_probed(tmp_path: Path) -> None:
    """skl2onnx binarizes with `x < threshold -> 0`, sklearn with `x > threshold -> 1`: a ratio of exactly 0.37 (two
    decimals, as ratios come) is answered 1 instead of 0. No golden row lands there (the sweep: 21 of 2,000 rows,
    answers 34.4 instead of -14.6)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Binarizer

    generator = np.random.default_rng(4)
    matrix = np.c_[np.round(generator.uniform(0, 1, 300), 2), generator.integers(0, 24, 300)]
    binarize = ColumnTransformer([("ratio", Binarizer(threshold=0.37), [0]), ("hour", "passthrough", [1])])
    model = make_pipeline(binarize, Ridge()).fit(matrix, (matrix[:, 0] > 0.37) * 50.0 + matrix[:, 1])
    answer = _answers(model.predict, RATIOS)
    cases = golden_cases(answer, RATIOS)
    golden_only = decide(lambda: model, {"loader": "cloudpickle"}, RATIOS, cases, Compile(), tmp_path / COMPILED_FILE)
    assert golden_only.compiled, golden_only.reason
    assert onnx_columns.thresholds((tmp_path / COMPILED_FILE).read_bytes(), golden_only.flavor["feeds"], RATIOS) == {
        0: [0.37]}
    probed = decide(lambda: model, {"loader": "cloudpickle"}, RATIOS, cases, Compile(), tmp_path / COMPILED_FILE,
                    answer)
    assert probed.path == "native"
    # The fitted coefficients' last digits vary with the machine's BLAS kernels: the values are compared, not printed.
    found = re.match(
        r"no exact compiled form: ONNX float64 differs from the registry model beyond rtol 1e-06, atol 0 near its split "
        r'thresholds \(the golden rows agree\): max relative error 0\.99 at input \{"hour": 0, "ratio": 0\.37\}: '
        r"registry model (\S+), compiled (\S+); ", probed.reason)
    assert found, probed.reason
    below, above = model.predict(np.array([[0.37, 0.0], [0.5, 0.0]]))
    assert (float(found[1]), float(found[2])) == (pytest.approx(below, rel=1e-9), pytest.approx(above, rel=1e-9))


def test_bin_edges_are_read_per_column() -> None:
    """KBinsDiscretizer compares each column, picked from the matrix, with its bin edges."""
    from sklearn.preprocessing import KBinsDiscretizer

    from factory.onnx_convert import candidates

    generator = np.random.default_rng(4)
    matrix = np.c_[np.round(generator.uniform(0, 1, 300), 2), generator.integers(0, 24, 300)]
    model = KBinsDiscretizer(n_bins=4, encode="ordinal", strategy="uniform").fit(matrix)
    candidate = next(candidates(model, {"loader": "cloudpickle"}, RATIOS))
    found = onnx_columns.thresholds(candidate.onnx, candidate.feeds, RATIOS)
    assert sorted(found) == [0, 1]
    assert np.allclose(found[0], model.bin_edges_[0][1:-1]) and np.allclose(found[1], model.bin_edges_[1][1:-1])
