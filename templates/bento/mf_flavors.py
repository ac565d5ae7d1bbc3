"""Model-kind dispatch: load a registered MLflow model the leanest way its flavor allows.

The compiled form comes first: `factory build` converts a model to ONNX where its flavor allows (an mlflow.onnx
model's own graph needs no conversion) and keeps it only when it reproduces the registry model's golden predictions
(`factory/compiled.py`); it then runs on onnxruntime alone, with no sklearn, pandas or mlflow in the serving venv or
the process.
Native loaders (sklearn from skops/pickle/cloudpickle, LightGBM, XGBoost) skip `import mlflow` and,
for models fit on arrays, pandas (~110 MiB per process, FIELD_NOTES). Everything else, custom
`PythonModel`s and models-from-code included, loads through `mlflow.pyfunc` inside the Bento.
Each loader must answer exactly what `mlflow.pyfunc.load_model(uri).predict` answers: golden
predictions recorded with pyfunc at build time check it for every model.

Copied verbatim into each model's folder by `factory render`; `factory build` decides the loader
(`flavor` in resolved.json) from the model's MLmodel file.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

SKLEARN_FORMATS = ("skops", "pickle", "cloudpickle")


@dataclass(frozen=True)
class LoadedModel:
    """`predict` takes what `wants` names: "frame" (pandas, signature columns), "array" (numpy) or
    "feeds" (a dict of numpy arrays, one per ONNX input, laid out as `feeds` says)."""

    predict: Callable[[Any], Any]
    wants: str
    feature_names: tuple[str, ...] = ()
    feeds: tuple = ()


def load(model_dir: Path, flavor: dict) -> LoadedModel:
    loader = flavor.get("loader", "pyfunc")
    if loader == "onnx":
        return _onnx(flavor)
    if loader in SKLEARN_FORMATS:
        return _sklearn(model_dir, flavor)
    if loader == "lightgbm":
        return _lightgbm(model_dir, flavor)
    if loader == "xgboost":
        return _xgboost(model_dir, flavor)
    import mlflow.pyfunc  # the general case, at mlflow's memory cost

    model = mlflow.pyfunc.load_model(str(model_dir))
    if flavor.get("feeds"):  # one-column tensors served as columns (factory/tensor_columns.py): fed as the tensors
        return LoadedModel(model.predict, "feeds", feeds=tuple(tuple(feed) for feed in flavor["feeds"]))
    return LoadedModel(model.predict, "frame")


def _unpickle(path: Path, serialization: str, trusted: list[str]) -> Any:
    if serialization == "skops":
        import skops.io

        return skops.io.load(path, trusted=trusted)
    with open(path, "rb") as handle:
        if serialization == "cloudpickle":
            import cloudpickle

            return cloudpickle.load(handle)
        return pickle.load(handle)


def native_model(model_dir: Path, flavor: dict) -> Any:
    """The model object its flavor saved (an estimator, a Booster): what `factory build` compiles.
    A model logged with code_paths unpickles classes from them: they go first on sys.path, as pyfunc puts them."""
    path = model_dir / flavor["model_file"]
    if flavor.get("code") and str(model_dir / flavor["code"]) not in sys.path:
        sys.path.insert(0, str(model_dir / flavor["code"]))
    if flavor["loader"] in SKLEARN_FORMATS:
        return _unpickle(path, flavor["loader"], flavor.get("trusted_types", []))
    if flavor.get("model_class") == "onnx.ModelProto":  # an mlflow.onnx model: the graph is the model
        import onnx

        return onnx.load(str(path))
    if flavor["loader"] == "lightgbm":
        if flavor.get("model_class", "lightgbm.basic.Booster") == "lightgbm.basic.Booster":
            import lightgbm

            return lightgbm.Booster(model_file=str(path))
        return _unpickle(path, flavor.get("serialization", "cloudpickle"), flavor.get("trusted_types", []))
    module, _, name = flavor["model_class"].rpartition(".")
    model = getattr(importlib.import_module(module), name)()
    model.load_model(str(path))
    return model


def _sklearn(model_dir: Path, flavor: dict) -> LoadedModel:
    model = native_model(model_dir, flavor)
    return _by_fit_input(model, getattr(model, flavor.get("predict_fn", "predict")))


def _by_fit_input(model: Any, predict: Callable[[Any], Any]) -> LoadedModel:
    # A model fit on a DataFrame may select columns by name (ColumnTransformer): it gets one, as under
    # pyfunc. One fit on an array gets an array and never imports pandas.
    if hasattr(model, "feature_names_in_"):
        return LoadedModel(predict, "frame")
    return LoadedModel(predict, "array")


def _lightgbm(model_dir: Path, flavor: dict) -> LoadedModel:
    model = native_model(model_dir, flavor)
    if flavor.get("model_class", "lightgbm.basic.Booster") == "lightgbm.basic.Booster":
        return LoadedModel(model.predict, "array")
    return _by_fit_input(model, model.predict)


def _xgboost(model_dir: Path, flavor: dict) -> LoadedModel:
    import xgboost

    model = native_model(model_dir, flavor)
    booster = model if isinstance(model, xgboost.Booster) else model.get_booster()
    names = tuple(booster.feature_names or ())
    if isinstance(model, xgboost.Booster):
        # pyfunc wraps the frame in a DMatrix; the column names carried here keep feature validation on.
        def predict(batch: Any) -> Any:
            return model.predict(xgboost.DMatrix(batch, feature_names=list(names) or None), validate_features=True)

        return LoadedModel(predict, "array", names)
    return LoadedModel(model.predict, "frame" if names else "array", names)


def _onnx(flavor: dict) -> LoadedModel:
    """The compiled model. One intra-op thread: a few rows per call, and the pod's CPU is a fraction of a core."""
    import onnxruntime

    path = Path(flavor["model_file"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # Errors only: a graph declaring a fixed output shape (onnxmltools' LightGBM label: [1]) has onnxruntime warn on
    # every run, a line in the pod's log per request.
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path if path.is_absolute() else Path(__file__).parent / path),
                                           options, providers=["CPUExecutionProvider"])
    # "outputs": every output, one record per row, as an mlflow.onnx model's pyfunc answers (factory/onnx_graph.py)
    records = "outputs" in flavor
    outputs = flavor["outputs"] if records else [flavor["output"]]
    flatten, guard, maps = flavor["flatten"], flavor.get("guard"), flavor.get("maps", {})

    def predict(feeds: dict) -> Any:
        results = session.run(outputs + ([guard] if guard else []), feeds)
        if guard and results[-1].any():  # factory/guard.py: rows the registry model's sklearn raises on
            raise ValueError("Input X contains NaN, infinity or a value too large for the model's arithmetic, as "
                             "scikit-learn checks each step's input (the registry model raises on this row too)")
        shaped = [_mapped(result, maps[name]) if name in maps else result.reshape(-1) if flatten else result
                  for name, result in zip(outputs, results)]
        return dict(zip(outputs, shaped)) if records else shaped[0]

    return LoadedModel(predict, "feeds", feeds=tuple(tuple(feed) for feed in flavor["feeds"]))


def _mapped(probabilities: Any, labels: list) -> list:
    """What the ZipMap the graph had answered (factory/onnx_graph.py): one {label: probability} map per row."""
    return [dict(zip(labels, row)) for row in probabilities.tolist()]
