"""LightGBM and XGBoost compiled as their libraries compute them (factory/onnx_boosters.py): each kind below served
natively before, and now compiles in double and answers 2,000 ordinary rows (a tenth missing an optional column) as
the registry model does; what no ONNX tree computes is refused, saying why. In-process models, served through the
pod's Predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e_support.compiled_forms import golden_cases, registry_answers, served_rows

from factory.catalog import Compile
from factory.compiled import COMPILED_FILE, decide
from factory.exactness import compare

SIGNATURE = {"inputs": [{"type": "double", "name": "distance km", "required": True},
                        {"type": "long", "name": "hour", "required": True},
                        {"type": "double", "name": "surge", "required": False},
                        {"type": "double", "name": "tilt", "required": True}]}
ROUNDS = 30


def _table(rows: int, seed: int) -> tuple[Any, Any]:
    """Distances with cents (splits fall between them, off float32), an hour, an optional surge, a signed tilt."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"distance km": np.round(rng.gamma(2.0, 3.0, rows), 2), "hour": rng.integers(0, 24, rows),
                          "surge": np.round(rng.uniform(1.0, 3.0, rows), 1),
                          "tilt": np.round(rng.normal(0, 1, rows), 2)})
    target = 2.1 * frame["distance km"] * frame["surge"] + 3 * np.sin(frame["hour"] / 4) + 2 * frame["tilt"]
    frame.loc[rng.random(rows) < 0.1, "surge"] = np.nan
    return frame, (target - target.median()).fillna(0.0)


def _lightgbm_train(objective: str, frame: Any, target: Any) -> Any:
    import lightgbm

    label = {"binary": target > 0, "multiclass": np.digitize(target, [-3, 3]),
             "lambdarank": np.digitize(target, [-5, 0, 5])}.get(objective, target)
    classes = {"num_class": 3} if objective == "multiclass" else {}
    groups = {"group": [100] * (len(frame) // 100)} if objective == "lambdarank" else {}  # queries of 100 rows
    return lightgbm.train({"objective": objective, "verbose": -1, **classes},
                          lightgbm.Dataset(frame, np.asarray(label, dtype=float), **groups), ROUNDS)


def _fitted(kind: str, frame: Any, target: Any) -> tuple[Any, str, str]:
    """The model, the loader its MLflow flavor gives it, and the method the registry model answers with."""
    import lightgbm
    import xgboost
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind.startswith("lightgbm.train"):
        return _lightgbm_train(kind.split()[1], frame, target), "lightgbm", "predict"
    if kind == "xgboost.train binary:logistic":  # its answer, P(class 1), reaches 1e-05 and below
        return xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(frame, target > 4), ROUNDS), "xgboost", \
            "predict"
    booleans, classes = target > 0, np.digitize(target, [-3, 3])
    fitted = {
        "LGBMClassifier on booleans": (lambda: lightgbm.LGBMClassifier(n_estimators=ROUNDS, verbose=-1)
                                       .fit(frame, booleans), "lightgbm", "predict"),
        "SimpleImputer + LGBMClassifier": (lambda: make_pipeline(SimpleImputer(), lightgbm.LGBMClassifier(
            n_estimators=ROUNDS, verbose=-1)).fit(frame, booleans), "cloudpickle", "predict_proba"),
        "XGBClassifier as mlflow.sklearn logs it": (lambda: xgboost.XGBClassifier(n_estimators=ROUNDS)
                                                    .fit(frame, classes), "cloudpickle", "predict_proba"),
        "StandardScaler + XGBClassifier": (lambda: make_pipeline(StandardScaler(), xgboost.XGBClassifier(
            n_estimators=ROUNDS)).fit(frame, booleans), "cloudpickle", "predict_proba"),
        "XGBRegressor": (lambda: xgboost.XGBRegressor(n_estimators=ROUNDS).fit(frame, target), "xgboost", "predict"),
        "StandardScaler + XGBRegressor": (lambda: make_pipeline(StandardScaler(), xgboost.XGBRegressor(
            n_estimators=ROUNDS)).fit(frame, target), "cloudpickle", "predict"),
    }[kind]
    return fitted[0](), fitted[1], fitted[2]


def _answer(model: Any, predict_fn: str):
    """The registry model's answers; a raw XGBoost Booster predicts on a DMatrix, as its MLflow flavor hands it one."""
    import xgboost

    predict = getattr(model, predict_fn)
    if isinstance(model, xgboost.Booster):
        predict = lambda batch: model.predict(xgboost.DMatrix(batch))  # noqa: E731
    return registry_answers(predict, SIGNATURE)


def _decide(kind: str, tmp_path: Path, seed: int = 1):
    frame, target = _table(2000, seed)
    model, loader, predict_fn = _fitted(kind, frame, target)
    answer = _answer(model, predict_fn)
    cases = golden_cases(answer, SIGNATURE)
    decision = decide(lambda: model, {"loader": loader, "predict_fn": predict_fn}, SIGNATURE, cases, Compile(),
                      tmp_path / COMPILED_FILE, answer, frame.head(16).to_dict("records"))
    return decision, answer


@pytest.mark.parametrize("kind", [
    "lightgbm.train regression",  # was: float32 thresholds, off between a threshold and its float32 rounding
    "lightgbm.train binary",  # was: P(class 1) < 0.5 computed as 1 - p in float32, 2.7e-06 off
    "lightgbm.train multiclass",  # was: its infinite thresholds read as 1e300
    "lightgbm.train lambdarank",  # a ranker's scores
    "LGBMClassifier on booleans",  # was: onnxmltools encoded boolean labels as strings, and refused a double input
    "SimpleImputer + LGBMClassifier",  # was: skl2onnx had no converter for LightGBM's estimators
    "XGBClassifier as mlflow.sklearn logs it",  # was: no converter, and onnxmltools reads trees only as f0, f1, …
    "StandardScaler + XGBClassifier",  # XGBoost's float32 cast of the scaler's double output is in the graph
    # was: onnxruntime added the base score after the float32 leaves, XGBoost before: answers near zero 2.6e-05 off
    "XGBRegressor",
    "StandardScaler + XGBRegressor",
    "xgboost.train binary:logistic",  # was: onnxruntime's float32 logistic, 0.00041 off at p = 3.3e-05
])
def test_boosters_compile_in_double_and_answer_ordinary_rows_as_their_library(kind: str, tmp_path: Path) -> None:
    decision, answer = _decide(kind, tmp_path)
    assert decision.compiled and decision.flavor["precision"] == "float64", decision.reason
    frame, _ = _table(2000, seed=2)
    rows = [{name: value for name, value in row.items() if value == value} for row in frame.to_dict("records")]
    served = served_rows(decision.flavor, tmp_path / COMPILED_FILE, rows, SIGNATURE)
    outcome = compare(answer([{"inputs": rows}])[0]["outputs"], served, 1e-6, 0.0)
    assert outcome.agrees, outcome.describe(rows)


@pytest.mark.parametrize("params, refusal", [
    ({"zero_as_missing": True}, "a LightGBM model treating zero as missing on feature 0 (zero_as_missing, or sparse "
                                "training data), which ONNX trees cannot express"),
    ({"linear_tree": True}, "a LightGBM model with linear trees (linear_tree), whose leaves ONNX trees cannot express"),
    ({"boosting_type": "rf", "bagging_freq": 1, "bagging_fraction": 0.8},
     "a LightGBM random forest (boosting 'rf'), whose trees onnxmltools 1.16 averages as if there were 100"),
])
def test_lightgbm_models_no_onnx_tree_computes_serve_natively_saying_why(params, refusal, tmp_path: Path) -> None:
    import lightgbm

    frame, target = _table(500, seed=1)
    model = lightgbm.LGBMRegressor(n_estimators=10, verbose=-1, **params).fit(frame, target)
    answer = _answer(model, "predict")
    cases = golden_cases(answer, SIGNATURE)
    decision = decide(lambda: model, {"loader": "lightgbm", "predict_fn": "predict"}, SIGNATURE, cases, Compile(),
                      tmp_path / COMPILED_FILE, answer)
    assert decision.reason == f"no exact compiled form: ONNX float64: {refusal}; ONNX float32: {refusal}"
    assert not (tmp_path / COMPILED_FILE).exists()


def test_lightgbm_splits_missing_values_from_every_number_at_infinity(tmp_path: Path) -> None:
    """LightGBM sends a missing value one way and every number the other at an infinite threshold, which its dump
    writes as 1e300: read so, the compiled form answered a surge of 1e308 as missing (272 of these 2,000 rows)."""
    decision, answer = _decide("lightgbm.train multiclass", tmp_path)
    assert decision.compiled, decision.reason
    frame, _ = _table(2000, seed=1)
    rows = [{**row, "surge": 1e308} for row in frame.to_dict("records")]
    served = served_rows(decision.flavor, tmp_path / COMPILED_FILE, rows, SIGNATURE)
    outcome = compare(answer([{"inputs": rows}])[0]["outputs"], served, 1e-6, 0.0)
    assert outcome.agrees, outcome.describe(rows)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_an_xgboost_booster_refuses_what_its_dmatrix_refuses(precision: str, tmp_path: Path) -> None:
    """A Booster predicts on a DMatrix, which raises on infinity, so on a double beyond float32's range; its estimators
    predict in place and answer it. The compiled forms refuse those rows as the Booster does (the float32 form, bare
    trees, imported no default opset for the guard's nodes: it did not load)."""
    import xgboost

    from factory.compiled import compiled_flavor
    from factory.onnx_convert import _convert

    frame, target = _table(500, seed=1)
    model = xgboost.train({"objective": "reg:squarederror"}, xgboost.DMatrix(frame, target), 10)
    row = {"distance km": 5.0, "hour": 8, "surge": 2.0, "tilt": 0.5}
    assert "error" in _answer(model, "predict")([{"inputs": [{**row, "surge": 3.5e38}]}])[0]
    candidate = _convert(model, {"loader": "xgboost", "predict_fn": "predict"}, SIGNATURE, precision)
    (tmp_path / COMPILED_FILE).write_bytes(candidate.onnx)
    flavor = compiled_flavor(candidate, "xgboost", 0.0)

    def served(row: dict) -> Any:
        return served_rows(flavor, tmp_path / COMPILED_FILE, [row], SIGNATURE)

    assert compare(_answer(model, "predict")([{"inputs": [row]}])[0]["outputs"], served(row), 1e-6, 0.0).agrees
    with pytest.raises(ValueError, match=r"^Input X contains NaN, infinity or a value too large for the model's "):
        served({**row, "surge": 3.5e38})
    largest = {**row, "surge": 3.4e38}  # rounds to a finite float32: answered
    assert served(largest) == _answer(model, "predict")([{"inputs": [largest]}])[0]["outputs"]
