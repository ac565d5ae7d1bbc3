"""A compiled form must refuse what the registry model refuses and answer what it answers, also on extreme values a
request may carry (the largest doubles, beyond float32's range, subnormals, the widest integers, a missing optional
value): sklearn raises "Input X contains infinity" where an ONNX graph computes on (factory/guard.py). And float32
arithmetic that cannot hold the tolerance (factory/precision.py): SVM kernels, and float32 sums of tree leaves where
a regression's answers change sign. In-process models, fit in milliseconds."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from e2e_support.compiled_forms import golden_cases, registry_answers, served_rows

from factory import onnx_convert, probes
from factory.catalog import Compile
from factory.compiled import COMPILED_FILE, REFUSED, decide

DOUBLES = {"inputs": [{"type": "double", "name": "price", "required": True},
                      {"type": "long", "name": "hour", "required": True}]}
MIXED = {"inputs": [*DOUBLES["inputs"], {"type": "string", "name": "city", "required": True}]}
REALISTIC = {"price": 12.5, "hour": 7, "city": "Oslo"}


def _decide(model, signature: dict, tmp_path: Path, predict_fn: str = "predict", settings: Compile = Compile()):
    predict = getattr(model, predict_fn)
    answer = registry_answers(predict, signature)
    cases = golden_cases(answer, signature)
    example = [{name: REALISTIC[name] for name in (spec["name"] for spec in signature["inputs"])}]
    return decide(lambda: model, {"loader": "cloudpickle", "predict_fn": predict_fn}, signature, cases, settings,
                  tmp_path / COMPILED_FILE, answer, example)


def _frame(signature: dict, n: int = 300):
    import pandas as pd

    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"price": np.round(rng.uniform(1, 200, n), 2), "hour": rng.integers(0, 24, n),
                          "city": rng.choice(["Oslo", "Rome", "Lima"], n)})
    return frame[[spec["name"] for spec in signature["inputs"]]], frame.price * 0.3 + np.sin(frame.hour) * 5


def _served(decision, tmp_path: Path, row: dict, guarded: bool = True):
    return served_rows(decision.flavor, tmp_path / COMPILED_FILE, [row], DOUBLES, guarded)


def test_a_scaled_model_refuses_a_value_its_scaler_overflows_on_as_sklearn_does(tmp_path: Path) -> None:
    """1e308 / the scaler's deviation (a ratio's, 0.3) is infinite: sklearn's LogisticRegression raises; the graph
    answered [0, 1]."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, target = _frame(DOUBLES)
    features = features.assign(price=features.price / 200)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, target > 30)
    decision = _decide(model, DOUBLES, tmp_path, "predict_proba")
    assert decision.flavor["precision"] == "float64" and decision.flavor["guard"] == "refused_rows", decision.reason
    assert decision.reason.startswith("ONNX float64 reproduces the registry model on 84 golden rows and 1 row of its "
                                      "logged input example and 1024 rows around its logged input example and 9 rows "
                                      "of extreme values (max relative error ")
    with pytest.raises(ValueError, match="Input X contains infinity"):
        model.predict_proba(features.iloc[:1].assign(price=1e308))
    assert _served(decision, tmp_path, {"price": 1e308, "hour": 3}, guarded=False) == [[0.0, 1.0]]  # before
    with pytest.raises(ValueError, match=r"^Input X contains NaN, infinity or a value too large for the model's "):
        _served(decision, tmp_path, {"price": 1e308, "hour": 3})
    served = _served(decision, tmp_path, {"price": 0.25, "hour": 7})
    assert np.allclose(served, model.predict_proba(pd.DataFrame([{"price": 0.25, "hour": 7}])), rtol=1e-12)


def test_a_tree_refuses_values_beyond_float32_as_sklearn_does(tmp_path: Path) -> None:
    """sklearn trees cast their input to float32: what rounds to infinity there raises, the largest value rounding to
    a finite float32 is answered; the double form's guard reads its input as float32 too."""
    import pandas as pd
    from sklearn.tree import DecisionTreeRegressor

    features, target = _frame(DOUBLES)
    model = DecisionTreeRegressor(max_depth=5, random_state=0).fit(features, target)
    decision = _decide(model, DOUBLES, tmp_path)
    assert decision.compiled and decision.flavor["precision"] == "float64", decision.reason
    assert "and 9 rows of extreme values" in decision.reason
    overflows = 2.0**128 - 2.0**103  # the midpoint above float32's largest value: rounds (to even) to infinity
    for price in (overflows, -overflows, 3.5e38):
        with pytest.raises(ValueError, match="Input X contains NaN, infinity"):
            _served(decision, tmp_path, {"price": price, "hour": 3})
    largest = float(np.nextafter(overflows, 0))
    served = _served(decision, tmp_path, {"price": largest, "hour": 3})
    assert np.allclose(served, model.predict(pd.DataFrame([{"price": largest, "hour": 3}])), rtol=1e-6)


def test_a_float32_form_refusing_what_the_registry_model_answers_serves_natively(tmp_path: Path, monkeypatch) -> None:
    """One-hot + scaler + logistic regression in float32 alone (its double form did not run before
    factory/onnx_double.py): it reads 1e308 as infinity where sklearn's float64 scaler does not overflow, so neither
    answering nor refusing would be exact."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features, target = _frame(MIXED)
    encode = ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                                ("numbers", StandardScaler(), ["price", "hour"])])
    model = make_pipeline(encode, LogisticRegression()).fit(features, target > 30)
    monkeypatch.setattr(onnx_convert, "PRECISIONS", ("float32",))
    decision = _decide(model, MIXED, tmp_path, "predict_proba")
    assert decision.path == "native"
    assert ('ONNX float32 answers an extreme input otherwise than the registry model (the golden rows agree): a '
            'different value at input {"city": "Oslo", "hour": 7, "price": 1e+308}: registry model [0.0, 1.0], '
            'compiled {"refused": "the model raises on this row"}') in decision.reason, decision.reason


def test_svm_kernels_computed_in_float32_compile_at_the_tolerance_the_build_advises(tmp_path: Path) -> None:
    """SVC probabilities: a "float64" form whose SVMClassifier still computes in float32; it agreed on the golden
    rows, and 1 of 2,000 ordinary rows differed by 1.0e-06 relative. The rtol advised serves it compiled."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    features, target = _frame(DOUBLES)
    model = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(features, target > 30)
    decision = _decide(model, DOUBLES, tmp_path, "predict_proba", Compile(rtol=1e-6))
    assert decision.reason.startswith(
        "no exact compiled form: ONNX float64: onnxruntime computes SVMClassifier in float32 whatever the input "
        "type: its answers differ from the registry model's by up to 1.6e-07 relative on the rows checked, and "
        "such kernels' sums by up to 1.4e-06 on other ordinary inputs (measured), beyond rtol 1e-06; set "
        "compile.rtol to 1e-05 in models.yaml to serve it compiled; ONNX float32 "), decision.reason
    decision = _decide(model, DOUBLES, tmp_path, "predict_proba", Compile(rtol=1e-5))
    assert decision.compiled and decision.flavor["precision"] == "float64", decision.reason


def test_svm_kernels_that_no_tolerance_serves_get_no_advice(tmp_path: Path) -> None:
    """StandardScaler + SVR (sweep A's sa_svr): its float64 form does not run (onnxruntime has no SVMRegressor on
    doubles) and its float32 one answers near zero 4.9 % off. The build had advised compile.rtol 1e-05 before either
    ran; with it, the model still served natively."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    import pandas as pd

    features, target = _frame(DOUBLES)
    model = make_pipeline(StandardScaler(), SVR(C=100.0)).fit(features, target)
    # The last digits of the registry model's answer depend on the CPU's vector instructions (AMD EPYC and Intel
    # machines here differ at the 12th); the build reports whatever this machine computes.
    registry = float(model.predict(pd.DataFrame([{"price": 7.0, "hour": 4}]))[0])
    for rtol in (1e-6, 1e-5):
        decision = _decide(model, DOUBLES, tmp_path, settings=Compile(rtol=rtol))
        reason, compiled = decision.reason.rsplit(", compiled ", 1)
        assert reason == (
            "no exact compiled form: ONNX float64 does not run: NotImplemented: [ONNXRuntimeError] : 9 : "
            "NOT_IMPLEMENTED : Could not find an implementation for SVMRegressor(1) node with name 'SVM'; ONNX "
            f"float32 differs from the registry model beyond rtol {rtol:g}, atol 0 on its logged input example or "
            "around its logged input example (the golden rows agree): max relative error 0.049 at input {\"hour\": 4, "
            f"\"price\": 7.0}}: registry model {registry!r}")
        assert float(compiled) == pytest.approx(-0.003948211669921875, rel=1e-6)


@pytest.mark.parametrize("found, measured, rtol, advised", [
    (["SVMClassifier"], 1.6e-7, 1e-6, "1e-05"),  # at least what other ordinary rows differ by
    (["SVMRegressor"], 1.6e-4, 1e-5, "0.0002"),  # what it measured, rounded up
    (["SVMRegressor"], 1.6e-4, 2e-4, None),
    (["SVMClassifier"], 0.0, 1e-5, None),
    ([], 1.6e-4, 1e-6, None),  # no float32 kernels (or classes only)
])
def test_the_rtol_advised_for_float32_kernels_is_the_one_they_measured(found, measured, rtol, advised) -> None:
    from factory import precision

    reason = precision.kernels_reason(found, measured, Compile(rtol=rtol))
    assert (reason and reason.rpartition("set compile.rtol to ")[2]) == (
        advised and f"{advised} in models.yaml to serve it compiled")


@pytest.mark.parametrize("kind, options", [
    ("ExtraTreesRegressor", {}), ("RandomForestClassifier", {}), ("GradientBoostingRegressor", {}),
    ("GradientBoostingClassifier", {}), ("HistGradientBoostingRegressor", {}), ("HistGradientBoostingClassifier", {}),
    ("HistGradientBoostingRegressor", {"loss": "poisson"}),  # exp of the trees' sum; skl2onnx answered the sum
])
def test_tree_ensembles_compile_in_double_as_sklearn_compares_and_sums(kind, options, tmp_path: Path) -> None:
    """skl2onnx wrote double trees' thresholds and leaves as float32 and declared outputs onnxruntime never gives
    (factory/onnx_trees.py); at double precision they agree near every threshold probed, at the default tolerance."""
    from sklearn import ensemble

    features, target = _frame(DOUBLES)
    classifier = kind.endswith("Classifier")
    answers = target > target.median() if classifier else target - target.min() if options else target - target.mean()
    model = getattr(ensemble, kind)(random_state=0, **options).fit(features, answers)
    decision = _decide(model, DOUBLES, tmp_path, "predict_proba" if classifier else "predict")
    assert decision.compiled and decision.flavor["precision"] == "float64", decision.reason
    assert " rows near its split thresholds " in decision.reason


@pytest.mark.parametrize("kind, fit_on_missing, precision", [
    ("RandomForestRegressor", False, "float64"),  # a missing value goes to the larger child, as it learned
    ("RandomForestRegressor", True, None),  # infinite thresholds: float32 only, whose leaf sums are not exact
    ("RandomForestClassifier", True, "float32"),
    ("DecisionTreeRegressor", True, "float32"),  # one tree: float32 comparisons as sklearn's, one leaf
    ("HistGradientBoostingRegressor", True, "float64"),
])
def test_trees_and_missing_values(kind, fit_on_missing, precision, tmp_path: Path) -> None:
    """A tree sends a missing value where it learned to (skl2onnx sent every one right): a request without the
    optional price is answered alike. A forest's tree fit on missing values splits at an infinite threshold, where
    skl2onnx's double conversion never returned: it is refused at once and the float32 form decides."""
    import pandas as pd
    from sklearn import ensemble, tree

    signature = {"inputs": [{**DOUBLES["inputs"][0], "required": False}, DOUBLES["inputs"][1]]}
    features, target = _frame(signature)
    if fit_on_missing:
        features = features.assign(price=features.price.mask(np.arange(len(features)) % 7 == 0))
    classifier = kind.endswith("Classifier")
    model = getattr(ensemble, kind, None) or getattr(tree, kind)
    model = model(random_state=0).fit(features, target > target.median() if classifier else target)
    predict_fn = "predict_proba" if classifier else "predict"
    decision = _decide(model, signature, tmp_path, predict_fn)
    assert decision.flavor.get("precision") == precision, decision.reason
    if precision is None:
        assert ("ONNX float64: a tree split at an infinite threshold (a tree fit on missing values), which skl2onnx "
                "converts in single precision only") in decision.reason, decision.reason
        return
    rows = [{"hour": hour} for hour in range(24)]
    served = served_rows(decision.flavor, tmp_path / COMPILED_FILE, rows, signature)
    expected = getattr(model, predict_fn)(pd.DataFrame([{"price": np.nan, **row} for row in rows]))
    assert np.allclose(served, expected, rtol=1e-6, atol=1e-6 if classifier else 0)


def test_a_column_passed_through_to_a_model_taking_missing_values_is_not_refused_them(tmp_path: Path) -> None:
    """skl2onnx writes a ColumnTransformer's "passthrough" as a FunctionTransformer, which checks nothing (sklearn's
    `no_validation` tag): the guard once refused every row missing the optional price that the model answers."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OrdinalEncoder

    signature = {"inputs": [{**MIXED["inputs"][0], "required": False}, *MIXED["inputs"][1:]]}
    features, target = _frame(signature)
    features = features.assign(price=features.price.mask(np.arange(len(features)) % 5 == 0))
    codes = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    encode = ColumnTransformer([("city", codes, ["city"])], remainder="passthrough")
    model = make_pipeline(encode, HistGradientBoostingRegressor(random_state=0)).fit(features, target)
    decision = _decide(model, signature, tmp_path)
    assert decision.compiled and decision.flavor["precision"] == "float64", decision.reason
    row = {"hour": 3, "city": "Rome"}
    served = served_rows(decision.flavor, tmp_path / COMPILED_FILE, [row], signature)
    assert np.allclose(served, model.predict(pd.DataFrame([{"price": np.nan, **row}])), rtol=1e-6)


@pytest.mark.parametrize("trees, loader, answers, atol, refused", [
    (20, "cloudpickle", [-1.5, 2.0], 0.0, True),
    (20, "lightgbm", [-1.5, 2.0], 0.0, True),  # LightGBM sums in double too
    (20, "xgboost", [-1.5, 2.0], 0.0, False),  # XGBoost sums float32 leaves itself
    (20, "cloudpickle", [1.5, 2.0], 0.0, False),  # answers of one sign stay away from zero
    (20, "cloudpickle", [-1.5, 2.0], 1e-4, False),
    (20, "cloudpickle", [[-1.5, 0.5], [2.0, 0.1]], 0.0, False),  # rows of probabilities: relative to their largest
    (1, "cloudpickle", [-1.5, 2.0], 0.0, False),  # one tree answers one leaf
])
def test_float32_leaf_sums_cannot_serve_answers_near_zero(trees, loader, answers, atol, refused) -> None:
    """A forest's float32 form errs by a fraction of its leaves, not of its answer: -0.01137006 for -0.01137 (8e-06
    relative) on 3 of 2,000 ordinary rows of the sweep's ExtraTreesRegressor, which no row checked held."""
    from factory import precision

    single = _forest_float32(trees)
    error = precision.leaf_error(single.onnx)
    assert (error > 1e-6) is (trees > 1)
    reason = precision.leaves(single.onnx, "float32", loader, answers, Compile(atol=atol))
    assert (reason is not None) is refused
    if refused:
        assert reason == (f"its float32 trees sum leaf values with an error up to {error:.1g} (2**-23 of the largest "
                          "leaves), and the registry model's answers change sign, so the answers near zero differ "
                          "beyond rtol 1e-06; set compile.atol to 5e-06 in models.yaml to serve it compiled")
    assert precision.leaves(single.onnx, "float64", loader, answers, Compile()) is None


@functools.cache
def _forest_float32(trees: int):
    from sklearn.ensemble import ExtraTreesRegressor

    from factory.onnx_convert import _convert

    features, target = _frame(DOUBLES)
    model = ExtraTreesRegressor(n_estimators=trees, random_state=0).fit(features, target - target.mean())
    return _convert(model, {"loader": "cloudpickle"}, DOUBLES, "float32")


def test_extreme_rows_hold_one_extreme_value_each_in_a_realistic_row() -> None:
    signature = {"inputs": [{"type": "double", "name": "price", "required": True},
                            {"type": "long", "name": "hour", "required": True},
                            {"type": "float", "name": "ratio", "required": False},
                            {"type": "string", "name": "city", "required": True}]}
    base = [{"price": None, "hour": 1, "ratio": 0.5, "city": "Oslo"}, {"price": 2.5, "hour": 1, "ratio": 0.5,
                                                                        "city": "Oslo"}]
    rows = probes.extremes(signature, base)
    assert [row["price"] for row in rows[:6]] == [1e308, -1e308, 3.5e38, -3.5e38, 5e-324, -0.0]
    assert [row["hour"] for row in rows[6:9]] == [2**63 - 1, -(2**63), 2**53 + 1]
    assert [row["ratio"] for row in rows[9:]] == [1e308, -1e308, 3.5e38, -3.5e38, 5e-324, -0.0, None]
    assert all(row["city"] == "Oslo" for row in rows) and len(rows) == 16
    tensor = {"inputs": [{"type": "tensor", "tensor-spec": {"dtype": "int32", "shape": [-1, 2]}}]}
    assert probes.extremes(tensor, [[1, 2]]) == [[2**31 - 1, 2], [-(2**31), 2], [1, 2**31 - 1], [1, -(2**31)]]
    assert probes.extremes(signature, []) == []
    assert REFUSED == {"refused": "the model raises on this row"}


@pytest.mark.parametrize("names, guard", [
    ([], "refused_rows"),
    (["price", "refused"], "refused_rows"),
    (["refused_rows"], "refused_rows2"),  # a request column of that name (sweep A's sg_names)
    (["refused_rows_abs0"], "refused_rows2"),  # the guard's own nodes are named after it
    (["refused_rows", "refused_rows2"], "refused_rows3"),
])
def test_the_guard_is_named_unlike_anything_in_the_graph(names, guard) -> None:
    from onnx import TensorProto, helper

    from factory.guard import unique_name

    inputs = [helper.make_tensor_value_info(name, TensorProto.DOUBLE, [None, 1]) for name in names]
    graph = helper.make_graph([helper.make_node("Identity", [name], [f"{name}_out"]) for name in names], "g",
                              inputs, [])
    assert unique_name(graph) == guard


def test_a_request_column_named_like_the_guard_compiles(tmp_path: Path) -> None:
    """A ColumnTransformer's columns are graph inputs named as the request's: one named "refused_rows" and a guard
    output of that name made onnxruntime refuse every candidate ("Duplicate definition of name")."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    signature = {"inputs": [{"type": "double", "name": "refused_rows", "required": True},
                            {"type": "long", "name": "hour", "required": True}]}
    features, target = _frame(DOUBLES)
    features = features.rename(columns={"price": "refused_rows"})
    scale = ColumnTransformer([("numbers", StandardScaler(), ["refused_rows", "hour"])])
    model = make_pipeline(scale, LogisticRegression()).fit(features, target > 30)
    answer = registry_answers(model.predict_proba, signature)
    cases = golden_cases(answer, signature)
    decision = decide(lambda: model, {"loader": "cloudpickle", "predict_fn": "predict_proba"}, signature, cases,
                      Compile(), tmp_path / COMPILED_FILE, answer, [{"refused_rows": 12.5, "hour": 7}])
    assert decision.compiled and decision.flavor["guard"] == "refused_rows2", decision.reason
    assert [feed[0] for feed in decision.flavor["feeds"]] == ["refused_rows", "hour"]
