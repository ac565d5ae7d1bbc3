"""The compiled fast path, exact or not at all: the exactness table, the build's decision per model kind
(compiled where exact, native with its reason otherwise), and a compiled model served without sklearn,
pandas or mlflow in the process. In-process models, fit in milliseconds; the e2e tests serve them."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factory.catalog import Compile
from factory.compiled import COMPILED_FILE, decide
from factory.exactness import compare
from factory.golden import sample_requests
from factory.runtime import BENTO_TEMPLATES, bento_module

DOUBLES = {"inputs": [{"type": "double", "name": "distance km", "required": True},
                      {"type": "long", "name": "hour", "required": True}]}
MIXED = {"inputs": [*DOUBLES["inputs"], {"type": "string", "name": "segment", "required": True}]}


@pytest.mark.parametrize("expected, actual, rtol, atol, agrees, error", [
    ([0.5, 2.0], [0.5, 2.0], 1e-6, 0.0, True, 0.0),
    ([1.0], [1.0 + 1e-7], 1e-6, 0.0, True, 1e-7),
    ([1.0], [1.0 + 1e-5], 1e-6, 0.0, False, 1e-5),
    ([[1.0, 6e-90]], [[1.0, 0.0]], 1e-6, 0.0, True, 6e-90),  # norm-wise: relative to the row's largest value
    ([[0.4, 0.6]], [[0.5, 0.5]], 1e-6, 0.0, False, 1 / 6),
    ([{"yes": 1.0, "no": 6e-90}], [{"yes": 1.0, "no": 0.0}], 1e-6, 0.0, True, 6e-90),  # probabilities by class name
    # Not probabilities: each output relative to itself. A KNN regressor's [y, 1e9 + y], y 12 % off, had
    # passed as 2e-08 relative to the row's largest value.
    ([[46.32, 1e9 + 46.32]], [[51.99, 1e9 + 51.99]], 1e-6, 0.0, False, 0.109),
    ([[0.2, 0.3]], [[0.2, 0.3 + 1e-7]], 1e-6, 0.0, True, 1e-7 / 0.3),  # in [0, 1], not summing to 1: element-wise
    ([[0.2, 6e-90]], [[0.2, 0.0]], 1e-6, 0.0, True, 3e-80),  # noise next to a far larger output (ROW_FLOOR)
    ([[0.2, 6e-9]], [[0.2, 0.0]], 1e-6, 0.0, False, 1.0),
    ([1e-12], [2e-12], 1e-6, 1e-9, True, 0.5),  # atol covers values near zero
    ([1], [1.0], 1e-6, 0.0, False, math.inf),  # a class answered as a float is another answer
    ([2], [3], 1e-6, 0.0, False, math.inf),
    (["TAXI"], ["PHV"], 1e-6, 0.0, False, math.inf),
    ([None], [None], 1e-6, 0.0, True, 0.0),  # NaN on both sides, nulled as served
    ([1.0], [None], 1e-6, 0.0, False, math.inf),
    ([[1.0, 2.0]], [[1.0]], 1e-6, 0.0, False, math.inf),
    ([1.0, 2.0], [1.0], 1e-6, 0.0, False, math.inf),
    ([{"p": 1.0, "class": 2}], [{"p": 1.0 + 1e-7, "class": 2}], 1e-6, 0.0, True, 1e-7),  # objects, key by key
    ([{"p": 1.0}], [{"q": 1.0}], 1e-6, 0.0, False, math.inf),
    # a ZipMap's classes answered here, and read back from JSON (a model answered in its own venv): one answer
    ([{0: 0.25, 1: 0.75}], [{"0": 0.25, "1": 0.75 + 1e-7}], 1e-6, 0.0, True, 1e-7 / 0.75),
    ([{True: 1.0}], [{"true": 1.0}], 1e-6, 0.0, True, 0.0),
    ([{0: 0.25, 1: 0.75}], [{"0": 0.25, "2": 0.75}], 1e-6, 0.0, False, math.inf),
    ([True], [1], 1e-6, 0.0, False, math.inf),
])
def test_exactness_table(expected, actual, rtol, atol, agrees, error) -> None:
    result = compare(expected, actual, rtol, atol)
    assert result.agrees is agrees
    assert result.relative_error == pytest.approx(error, rel=1e-3)


def test_exactness_names_the_worst_failing_row() -> None:
    result = compare([1.0, 2.0, 3.0], [1.0, 2.1, 3.0001], 1e-6, 0.0)
    assert result.describe([{"x": 1}, {"x": 2}, {"x": 3}]) == (
        'max relative error 0.048 at input {"x": 2}: registry model 2.0, compiled 2.1')


def _cases(signature: dict, predict, wants: str = "array") -> list[dict]:
    """Golden cases as the build records them: sampled requests, the model's own answers."""
    values = bento_module("mf_inputs")
    cases = []
    for request in sample_requests(signature, 12, 8):
        rows = request["inputs"]
        batch = values.frame(rows, signature["inputs"]) if wants == "frame" else values.array(rows, signature["inputs"])
        cases.append({"inputs": rows, "outputs": values.nulled(np.asarray(predict(batch)).tolist())})
    return cases


def _training(n: int = 300):
    import pandas as pd

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"distance km": rng.gamma(2.0, 3.0, n), "hour": rng.integers(0, 24, n).astype("int64"),
                          "segment": rng.choice(["TAXI", "PHV"], n)})
    target = 3.0 + 1.4 * frame["distance km"] + 0.1 * frame["hour"] + (frame["segment"] == "TAXI") * 2.0
    return frame, target.to_numpy()


def _decide(model, signature: dict, tmp_path: Path, cases: list[dict], loader: str = "skops",
            settings: Compile = Compile(), predict_fn: str = "predict"):
    return decide(lambda: model, {"loader": loader, "predict_fn": predict_fn}, signature, cases, settings,
                  tmp_path / COMPILED_FILE)


def test_a_probability_pipeline_compiles_in_double(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame, target = _training()
    features = frame[["distance km", "hour"]].to_numpy(dtype=float)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, target > 10)
    decision = _decide(model, DOUBLES, tmp_path, _cases(DOUBLES, model.predict_proba), predict_fn="predict_proba")
    assert decision.compiled, decision.reason
    assert decision.reason.startswith("ONNX float64 reproduces the registry model on ")
    assert decision.flavor["output"] == "probabilities" and not decision.flavor["flatten"]
    assert (tmp_path / COMPILED_FILE).is_file()


@pytest.mark.parametrize("kind", ["LogisticRegression", "HistGradientBoostingClassifier"])
def test_a_classifier_fit_on_booleans_answers_booleans_compiled(kind: str, tmp_path: Path) -> None:
    """The converters label a boolean target's classes 0 and 1; the registry model answers false and true."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    frame, target = _training()
    features = frame[["distance km", "hour"]].to_numpy(dtype=float)
    model = {"LogisticRegression": LogisticRegression, "HistGradientBoostingClassifier":
             HistGradientBoostingClassifier}[kind]().fit(features, target > 10)
    cases = _cases(DOUBLES, model.predict)
    assert {type(output) for case in cases for output in case["outputs"]} == {bool}
    decision = _decide(model, DOUBLES, tmp_path, cases)
    assert decision.compiled and decision.flavor["output"] == "label_as_booleans", decision.reason
    flavor = {**decision.flavor, "model_file": str(tmp_path / COMPILED_FILE)}
    rows = [{"distance km": distance, "hour": 3} for distance in (0.5, 40.0)]
    served = bento_module("mf_runtime").Predictor("", {"signature": DOUBLES, "flavor": flavor}).run(rows)
    assert json.dumps(bento_module("mf_inputs").nulled(served)) == json.dumps(model.predict(
        np.array([[row["distance km"], row["hour"]] for row in rows])).tolist()) == "[false, true]"


def test_columns_picked_by_name_compile_with_one_input_per_column(tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, target = _training()
    encode = ColumnTransformer([("numeric", StandardScaler(), ["distance km", "hour"]),
                                ("segment", OneHotEncoder(handle_unknown="ignore"), ["segment"])])
    model = make_pipeline(encode, Ridge()).fit(frame, target)
    decision = _decide(model, MIXED, tmp_path, _cases(MIXED, model.predict, "frame"), loader="cloudpickle")
    assert decision.compiled, decision.reason
    assert [feed[2] for feed in decision.flavor["feeds"]] == [["distance km"], ["hour"], ["segment"]]


def test_an_estimator_fit_on_a_frame_compiles_with_one_matrix(tmp_path: Path) -> None:
    """A bare estimator knows its columns' names (feature_names_in_) yet picks none: skl2onnx refused one
    input per column ("at most 1 input(s) is(are) supported"); names that collide once sanitised too."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    frame, target = _training()
    odd = {"inputs": [{"type": "double", "name": name, "required": True} for name in ("a b", "a_b", "größe")]}
    features = pd.DataFrame({"a b": frame["distance km"], "a_b": frame["hour"].astype(float), "größe": target})
    model = LogisticRegression().fit(features, target > 10)
    decision = _decide(model, odd, tmp_path, _cases(odd, model.predict_proba, "frame"), predict_fn="predict_proba")
    assert decision.compiled, decision.reason
    assert [feed[2] for feed in decision.flavor["feeds"]] == [["a b", "a_b", "größe"]]


def test_an_xgboost_sklearn_classifier_compiles_comparing_in_single_precision(tmp_path: Path) -> None:
    """XGBClassifier (the sklearn API) as `mlflow.xgboost` logs it (onnxmltools refused skl2onnx's tensor types): its
    double form casts the input to float32 in the graph, as XGBoost does."""
    import onnx
    from xgboost import XGBClassifier

    frame, target = _training()
    classes = np.digitize(target, [8.0, 14.0])  # three classes
    model = XGBClassifier(n_estimators=5, max_depth=3).fit(frame[["distance km", "hour"]], classes)
    decision = _decide(model, DOUBLES, tmp_path, _cases(DOUBLES, model.predict), loader="xgboost")
    assert decision.compiled, decision.reason
    assert decision.reason.startswith("ONNX float64 reproduces the registry model on ")
    graph = onnx.load(str(tmp_path / COMPILED_FILE)).graph
    casts = {node.output[0]: node for node in graph.node if node.op_type == "Cast"}
    tree = next(node for node in graph.node if node.op_type == "TreeEnsembleClassifier")
    assert casts[tree.input[0]].input == ["X"] and casts[tree.input[0]].attribute[0].i == onnx.TensorProto.FLOAT


def _booster(library: str, objective: str):
    """A raw Booster as `lightgbm.train` / `xgboost.train` make it, and its own predict on a matrix."""
    import lightgbm
    import xgboost

    frame, target = _training()
    matrix = frame[["distance km", "hour"]].to_numpy(float)
    labels = {"binary": (target > 12).astype(int), "multi": np.digitize(target, [8.0, 14.0])}
    label = labels["multi" if "multi" in objective else "binary"] if objective != "regression" else target
    if library == "lightgbm":
        classes = {"num_class": 3} if objective == "multiclass" else {}
        model = lightgbm.train({"objective": objective, "verbose": -1, **classes}, lightgbm.Dataset(matrix, label), 10)
        return model, model.predict
    classes = {"num_class": 3} if objective.startswith("multi") else {}
    model = xgboost.train({"objective": objective, **classes}, xgboost.DMatrix(matrix, label), 10)
    return model, lambda batch: model.predict(xgboost.DMatrix(batch))


@pytest.mark.parametrize("library, objective, compiled", [
    ("lightgbm", "binary", True),  # predict answers P(class 1): column 1 of the converter's probabilities
    ("lightgbm", "multiclass", True),
    ("lightgbm", "regression", True),
    ("xgboost", "binary:logistic", True),
    ("xgboost", "multi:softprob", True),
    ("xgboost", "multi:softmax", False),  # predict answers class indices as floats: no output reproduces them
    ("xgboost", "binary:logitraw", False),  # raw margins: the converter emits probabilities only
])
def test_raw_boosters_compile_what_their_predict_answers(library, objective, compiled, tmp_path: Path) -> None:
    model, predict = _booster(library, objective)
    decision = _decide(model, DOUBLES, tmp_path, _cases(DOUBLES, predict), loader=library)
    assert decision.compiled is compiled, decision.reason
    if not compiled:
        assert decision.reason.startswith("no exact compiled form: ONNX float64 ") and "; ONNX float32 " in decision.reason


def test_a_tolerance_tighter_than_the_compiled_form_falls_back_naming_the_error_and_input(tmp_path: Path) -> None:
    from sklearn.ensemble import GradientBoostingRegressor

    frame, target = _training()
    model = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(frame[["distance km", "hour"]].to_numpy(float),
                                                                            target)
    cases = _cases(DOUBLES, model.predict)
    # onnxruntime's trees answer a float even when they compare and sum in double: within the default 1e-6
    assert _decide(model, DOUBLES, tmp_path, cases).compiled
    decision = _decide(model, DOUBLES, tmp_path, cases, settings=Compile(rtol=1e-12))
    assert decision.path == "native" and not (tmp_path / COMPILED_FILE).exists()
    assert decision.reason.startswith("no exact compiled form: ONNX float64 differs from the registry model beyond "
                                      "rtol 1e-12, atol 0: max relative error ")
    assert "; ONNX float32 differs from the registry model beyond rtol 1e-12, atol 0: max relative error " in decision.reason
    assert " at input {\"distance km\": " in decision.reason and "\n" not in decision.reason


def test_an_estimator_skl2onnx_does_not_support_serves_natively_and_says_why(tmp_path: Path) -> None:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import SplineTransformer

    frame, target = _training()
    model = make_pipeline(SplineTransformer(), Ridge()).fit(frame[["distance km", "hour"]].to_numpy(float), target)
    decision = _decide(model, DOUBLES, tmp_path, _cases(DOUBLES, model.predict))
    assert decision.path == "native"
    assert decision.reason.startswith("no exact compiled form: ONNX float64: MissingShapeCalculator: Unable to find a "
                                      "shape calculator for type '<class 'sklearn.preprocessing._polynomial."
                                      "SplineTransformer'>'"), decision.reason


@pytest.mark.parametrize("loader, settings, cases, reason", [
    ("pyfunc", Compile(), [{"inputs": [], "outputs": []}],
     "an mlflow.pyfunc model has no ONNX converter (only sklearn, LightGBM and XGBoost do, and an "
     "mlflow.onnx model is one)"),
    ("skops", Compile(enabled=False), [{"inputs": [], "outputs": []}], "compile.enabled is false in models.yaml"),
    ("skops", Compile(), [], "no golden predictions to check a compiled form against"),
])
def test_models_that_are_not_compiled_say_why(loader, settings, cases, reason, tmp_path: Path) -> None:
    decision = _decide(object(), DOUBLES, tmp_path, cases, loader=loader, settings=settings)
    assert (decision.path, decision.reason, decision.flavor) == ("native", reason, {})


@pytest.mark.parametrize("signature, reason", [
    ({"inputs": [{"type": "double", "name": "x"}, {"type": "map", "values": {"type": "double"}, "name": "fees"}]},
     "input column 'fees' is a map: a compiled form takes flat numeric columns only, so MLflow's pyfunc serves it"),
    ({"inputs": [{"type": "array", "items": {"type": "double"}}]},
     "input column 'c0' is an array: a compiled form takes flat numeric columns only, so MLflow's pyfunc serves it"),
    ({"inputs": [{"type": "double", "name": "x"}], "params": [{"name": "k", "type": "long", "default": 3}]},
     "the signature has inference params: only MLflow's pyfunc takes them"),
])
def test_nested_columns_and_params_are_never_compiled_and_say_why(signature, reason, tmp_path: Path) -> None:
    decision = _decide(object(), signature, tmp_path, [{"inputs": [], "outputs": []}], loader="pyfunc")
    assert (decision.path, decision.reason) == ("native", reason)


def test_a_model_that_does_not_load_for_conversion_serves_natively(tmp_path: Path) -> None:
    def broken():
        raise OSError("model.skops: truncated")

    decision = decide(broken, {"loader": "skops"}, DOUBLES, [{"inputs": [], "outputs": []}], Compile(),
                      tmp_path / COMPILED_FILE)
    assert decision.reason == "the model did not load for conversion (OSError: model.skops: truncated)"


SERVED_IMPORTS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import mf_runtime, mf_schema
resolved = mf_runtime.load_resolved(sys.argv[1] + "/service.py")
predictor = mf_runtime.Predictor("", resolved)
from pydantic import TypeAdapter
rows = TypeAdapter(list[mf_schema.row_model(resolved["signature"]["inputs"])]).validate_json(sys.argv[2])
print(json.dumps({"outputs": predictor.predict(rows), "modules": sorted(sys.modules)}))
"""


def test_the_compiled_predictor_imports_no_sklearn_pandas_or_mlflow(tmp_path: Path) -> None:
    """The factory's own venv holds all three: the served code must still not import them."""
    from sklearn.linear_model import Ridge

    frame, target = _training()
    model = Ridge().fit(frame[["distance km", "hour"]].to_numpy(float), target)
    cases = _cases(DOUBLES, model.predict)
    decision = _decide(model, DOUBLES, tmp_path, cases)
    assert decision.compiled, decision.reason
    for name in ("mf_runtime", "mf_flavors", "mf_inputs", "mf_http", "mf_schema"):
        shutil.copy(BENTO_TEMPLATES / f"{name}.py", tmp_path)
    (tmp_path / "resolved.json").write_text(json.dumps({"signature": DOUBLES, "flavor": decision.flavor}))
    result = subprocess.run([sys.executable, "-c", SERVED_IMPORTS, str(tmp_path), json.dumps(cases[0]["inputs"])],
                            capture_output=True, text=True, timeout=60, check=True)
    served = json.loads(result.stdout)
    assert served["outputs"] == pytest.approx(cases[0]["outputs"], rel=1e-9)
    assert "onnxruntime" in served["modules"]
    assert not [name for name in served["modules"] if name.split(".")[0] in ("sklearn", "pandas", "mlflow")]


@pytest.mark.parametrize("served, golden, rtol, atol, problem", [
    (b"[[1.0, 0.0]]", [[1.0, 6e-90]], 1e-6, 0.0, None),  # as `factory build` compared: norm-wise per row
    (b"[[0.5, 0.5]]", [[0.4, 0.6]], 1e-6, 0.0, "output 0 is [0.5, 0.5], golden [0.4, 0.6]"),
    (b"[12.3003]", [12.3], 1e-6, 0.0, "output 0 is 12.3003, golden 12.3"),
    (b"[12.3003]", [12.3], 1e-6, 1e-3, None),  # a compiled model's own compile tolerance
    (b"[1000001]", [1000000], 1e-6, 0.0, "output 0 is 1000001, golden 1000000"),  # a class id is never "close"
    (b"[[2, 0.9999999]]", [[2, 1.0]], 1e-6, 0.0, None),
    (b"[1.0]", [1], 1e-6, 0.0, None),  # the same number, as JSON writes it either way
    (b'[{"p": 0.9999999}]', [{"p": 1.0}], 1e-6, 0.0, None),
    (b"[true]", [1], 1e-6, 0.0, "output 0 is true, golden 1"),
    (b"[0.5, 7]", [0.5, 6], 1e-6, 0.0, "output 1 is 7, golden 6"),
])
def test_factory_tests_golden_check_uses_the_compile_tolerance(served, golden, rtol, atol, problem) -> None:
    from factory.fuzz_report import Response, golden_problem

    assert golden_problem(Response(200, served, 1.0), golden, rtol, atol) == problem
