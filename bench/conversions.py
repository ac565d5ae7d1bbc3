"""Models the converters alone left native or in float32: tree ensembles of scikit-learn, LightGBM and XGBoost
(factory/onnx_trees.py, factory/onnx_boosters.py) and the scikit-learn steps skl2onnx wrote for float32 only
(factory/onnx_double.py). The compiled form `factory build` now keeps (double precision) against the native model,
and against the float32 form the converters alone gave, side by side in one run.

Usage: python -m bench.conversions [--iterations 300] [--rows 2000] [--kinds SUBSTRING ...]
Each model is fit in process on a per-city-like table (distance with cents, hour, surge, a vehicle type), then
decided by `factory.compiled.decide` as `factory build` decides it (golden rows, probes near thresholds, extreme rows).
Printed per model: the decision; `Predictor.run` (what the pod runs) of 1 and 32 rows, native vs compiled, median µs;
and, on `--rows` ordinary rows drawn like the training data, how many answers of the double (kept) and the float32
form differ from the registry model's beyond 1e-06 relative (and the double form's largest relative error).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from bench.compiled import median_us
from factory.catalog import Compile
from factory.compiled import COMPILED_FILE, compiled_flavor, decide
from factory.exactness import compare
from factory.golden import sample_requests
from factory.onnx_convert import Candidate, candidates
from factory.runtime import bento_module

NUMBERS = {"inputs": [{"type": "double", "name": "distance km", "required": True},
                      {"type": "long", "name": "hour", "required": True},
                      {"type": "double", "name": "surge", "required": True}]}
MIXED = {"inputs": [*NUMBERS["inputs"], {"type": "string", "name": "vehicle", "required": True}]}
TREE_KINDS = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor", "RandomForestRegressor",
              "ExtraTreesRegressor", "GradientBoostingRegressor", "RandomForestClassifier",
              # LightGBM as `mlflow.lightgbm` logs it (raw Boosters of `lightgbm.train`, its scikit-learn estimators),
              # and XGBoost at the end of a scikit-learn pipeline as `mlflow.sklearn` logs it
              "lightgbm.train regression", "lightgbm.train binary", "LGBMClassifier", "StandardScaler + XGBClassifier",
              "XGBRegressor")
MIXED_KINDS = {"OneHotEncoder first + StandardScaler + LogisticRegression", "TargetEncoder + Ridge"}
RTOL = 1e-6


def table(rows: int, seed: int) -> tuple[Any, Any]:
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"distance km": np.round(rng.gamma(2.0, 3.0, rows), 2), "hour": rng.integers(0, 24, rows),
                          "surge": np.round(rng.uniform(1.0, 3.0, rows), 1)})
    minutes = 4 + 2.1 * frame["distance km"] * frame["surge"] + 3 * np.sin(frame["hour"] / 4) + rng.normal(0, 1, rows)
    frame["vehicle"] = rng.choice(["sedan", "suv", "van"], rows)
    return frame, minutes - minutes.median()


def signature(kind: str) -> dict:
    return MIXED if kind in MIXED_KINDS else NUMBERS


def columns(kind: str) -> list[str]:
    return [spec["name"] for spec in signature(kind)["inputs"]]


def fitted(kind: str, frame: Any, target: Any) -> tuple[Any, str, str]:
    """The model (fit on its signature's columns), the method the registry model answers with, and the loader its
    MLflow flavor gives it."""
    import lightgbm
    import xgboost
    from sklearn import ensemble
    from sklearn.base import is_classifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = frame[columns(kind)]
    if kind in SKLEARN_STEPS:
        model, predict_fn = SKLEARN_STEPS[kind]()
        if kind.startswith("TransformedTarget"):  # a log-space target is positive, as minutes and fares are
            target = target - target.min() + 1.0
        return model.fit(frame, target > 0 if is_classifier(model) else target), predict_fn, "cloudpickle"
    classifier = kind.endswith("Classifier") or kind.endswith("binary")
    label = target > 0 if classifier else target
    if kind.startswith("lightgbm.train"):
        objective = kind.split()[1]
        booster = lightgbm.train({"objective": objective, "verbose": -1}, lightgbm.Dataset(frame, label.astype(float)),
                                 100)
        return booster, "predict", "lightgbm"
    if kind == "LGBMClassifier":  # `mlflow.lightgbm` answers its labels (`predict`), here booleans
        return lightgbm.LGBMClassifier(n_estimators=100, verbose=-1).fit(frame, label), "predict", "lightgbm"
    if kind == "XGBRegressor":  # as `mlflow.xgboost` logs it
        return xgboost.XGBRegressor(n_estimators=100).fit(frame, label), "predict", "xgboost"
    if kind == "StandardScaler + XGBClassifier":
        model = make_pipeline(StandardScaler(), xgboost.XGBClassifier(n_estimators=100)).fit(frame, label)
        return model, "predict_proba", "cloudpickle"
    options = {"max_iter": 100} if kind.startswith("Hist") else {"n_estimators": 50, "max_depth": 10}
    model = getattr(ensemble, kind)(random_state=0, **options).fit(frame, label)
    return model, "predict_proba" if classifier else "predict", "cloudpickle"


def _sklearn_steps() -> dict:
    """The scikit-learn models of factory/onnx_double.py and factory/onnx_functions.py: kind -> (unfitted model, the
    method answering)."""
    from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
    from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier, SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import (FunctionTransformer, OneHotEncoder, PolynomialFeatures, PowerTransformer,
                                       StandardScaler, TargetEncoder)
    from sklearn.svm import LinearSVC

    def first(encoder: Any) -> Any:
        return ColumnTransformer([("vehicle", encoder, ["vehicle"])], remainder="passthrough")
    return {
        "StandardScaler + LinearSVC": lambda: (make_pipeline(StandardScaler(), LinearSVC()), "predict"),
        "StandardScaler + RidgeClassifier": lambda: (make_pipeline(StandardScaler(), RidgeClassifier()), "predict"),
        "StandardScaler + SGDClassifier (hinge)": lambda: (make_pipeline(StandardScaler(), SGDClassifier(
            random_state=0)), "predict"),
        "PolynomialFeatures + Ridge": lambda: (make_pipeline(PolynomialFeatures(2), Ridge()), "predict"),
        "OneHotEncoder first + StandardScaler + LogisticRegression": lambda: (make_pipeline(
            first(OneHotEncoder(drop="first", handle_unknown="ignore")), StandardScaler(), LogisticRegression()),
            "predict_proba"),
        "TargetEncoder + Ridge": lambda: (make_pipeline(first(TargetEncoder(random_state=0)), Ridge()), "predict"),
        "FunctionTransformer(np.log1p) + Ridge": lambda: (make_pipeline(FunctionTransformer(np.log1p), Ridge()),
                                                          "predict"),
        "TransformedTargetRegressor(Ridge, np.log, np.exp)": lambda: (TransformedTargetRegressor(
            Ridge(), func=np.log, inverse_func=np.exp), "predict"),
        "PowerTransformer + Ridge": lambda: (make_pipeline(PowerTransformer(), Ridge()), "predict"),
    }


SKLEARN_STEPS = _sklearn_steps()  # then the steps skl2onnx converted for float32 only, or not at all
KINDS = TREE_KINDS + tuple(SKLEARN_STEPS)


def registry_answer(model: Any, predict_fn: str, kind: str):
    """The registry model's answers as golden.answerer records them (an infinity or NaN as null)."""
    values = bento_module("mf_inputs")

    def answer(requests: list[dict]) -> list[dict]:
        return [one(request["inputs"]) for request in requests]

    def one(rows: list[dict]) -> dict:
        try:
            with np.errstate(all="ignore"):  # exp of a huge log-space answer, on golden rows up to 1e12
                answered = getattr(model, predict_fn)(values.frame(rows, signature(kind)["inputs"]))
            return {"outputs": values.nulled(np.asarray(answered).tolist())}
        except ValueError as exc:  # sklearn's check_array, on the extreme rows
            return {"error": str(exc)}
    return answer


def native_flavor(model: Any, predict_fn: str, loader: str, work: Path) -> dict:
    """The model saved as its MLflow flavor saves it (a Booster's own text file, anything else pickled), and the
    flavor the pod loads it by."""
    if loader == "lightgbm" and type(model).__name__ == "Booster":
        model.save_model(str(work / "model.txt"))
        return {"loader": loader, "model_file": "model.txt"}
    model_class = f"{type(model).__module__}.{type(model).__name__}"
    if loader == "xgboost":
        model.save_model(str(work / "model.json"))
        return {"loader": loader, "model_file": "model.json", "model_class": model_class}
    (work / "model.pkl").write_bytes(cloudpickle.dumps(model))
    if loader == "lightgbm":
        return {"loader": loader, "model_file": "model.pkl", "serialization": "cloudpickle", "model_class": model_class}
    return {"loader": loader, "model_file": "model.pkl", "predict_fn": predict_fn}


def predictors(model: Any, predict_fn: str, loader: str, flavor: dict, work: Path, kind: str) -> dict[str, Any]:
    """The pod's Predictor over the native model and over the compiled one."""
    runtime = bento_module("mf_runtime")
    native = native_flavor(model, predict_fn, loader, work)
    compiled = {**flavor, "model_file": str(work / COMPILED_FILE)}
    return {form: runtime.Predictor(str(work), {"signature": signature(kind), "flavor": chosen})
            for form, chosen in (("native", native), ("compiled", compiled))}


def beyond(expected: Any, actual: Any) -> int:
    """Rows whose answer differs beyond RTOL (class probabilities: relative to the row's largest)."""
    expected, actual = np.asarray(expected, float).reshape(len(expected), -1), np.asarray(actual, float)
    scale = np.abs(expected).max(axis=1, keepdims=True) if expected.shape[1] > 1 else np.abs(expected)
    return int((np.abs(actual.reshape(expected.shape) - expected) > RTOL * scale).any(axis=1).sum())


def float32_beyond(model: Any, predict_fn: str, loader: str, records: list[dict], expected: Any, work: Path,
                   kind: str) -> str:
    """The float32 candidate's count, run as the pod would run it (the form the converters alone gave)."""
    found = [c for c in candidates(model, {"loader": loader, "predict_fn": predict_fn}, signature(kind))
             if isinstance(c, Candidate) and c.precision == "float32"]
    if not found:
        return "none"
    (work / "float32.onnx").write_bytes(found[0].onnx)
    flavor = {**compiled_flavor(found[0], loader, expected[0]), "model_file": str(work / "float32.onnx")}
    run = bento_module("mf_runtime").Predictor(str(work), {"signature": signature(kind), "flavor": flavor}).run
    return str(beyond(expected, run(records)))


def measure(kind: str, args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-conversions-"))
    frame, target = table(2000, seed=1)
    model, predict_fn, loader = fitted(kind, frame, target)
    answer = registry_answer(model, predict_fn, kind)
    answered = [(request, answer([request])[0]) for request in sample_requests(signature(kind), 12, 8)]
    cases = [{**request, "outputs": reply["outputs"]} for request, reply in answered if "outputs" in reply]
    example = frame[columns(kind)].head(16).to_dict("records")
    decision = decide(lambda: model, {"loader": loader, "predict_fn": predict_fn}, signature(kind), cases, Compile(),
                      work / COMPILED_FILE, answer, example)
    print(f"{kind}: serves {decision.path}: {decision.reason[:160]}", flush=True)
    if not decision.compiled:
        return
    ordinary, _ = table(args.rows, seed=2)
    records = ordinary[columns(kind)].to_dict("records")
    expected = answer([{"inputs": records}])[0]["outputs"]
    runs = predictors(model, predict_fn, loader, decision.flavor, work, kind)
    timings = {form: [median_us(lambda: runs[form].run(records[:size]), args.iterations) for size in (1, 32)]
               for form in runs}
    (one_native, many_native), (one, many) = timings["native"], timings["compiled"]
    served = runs["compiled"].run(records)
    largest = compare(expected, bento_module("mf_inputs").nulled(served), RTOL, 0.0).relative_error
    print(f"  {'':<36} {one:>8.0f} {one_native:>8.0f} {one_native / one:>6.1f} {many:>8.0f} {many_native:>8.0f} "
          f"{many_native / many:>6.1f} {beyond(expected, served):>8} ({largest:.1g}) "
          f"{float32_beyond(model, predict_fn, loader, records, expected, work, kind):>8}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--kinds", nargs="*", default=[], help="only the kinds whose name holds one of these")
    args = parser.parse_args()
    for name in ("mf_http", "mf_inputs", "mf_flavors"):
        bento_module(name)
    print(f"per model: its decision, then µs compiled / native / ratio for 1 row and for 32 rows; rows of {args.rows} "
          f"beyond {RTOL:g}: double (kept; its largest relative error) / float32")
    for kind in KINDS:
        if not args.kinds or any(part in kind for part in args.kinds):
            measure(kind, args)


if __name__ == "__main__":
    main()
