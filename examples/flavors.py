"""Register models of every flavor a data scientist may hand the factory, as their frameworks save them,
plus planted faults: the end-to-end tests and `python -m bench.flavors` serve them.

Usage: python examples/flavors.py REGISTRY_DIR. Natively loaded models share one pip requirement
list and pyfunc models another, so the whole set costs two serving venvs (cached by requirement hash).
"""

from __future__ import annotations

import importlib.metadata
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS_MODEL = "flavor_sklearn_columns"     # ColumnTransformer selecting by name, fit on a DataFrame, cloudpickle
LIGHTGBM_MODEL = "flavor_lightgbm"           # lightgbm.Booster
XGBOOST_MODEL = "flavor_xgboost"             # xgboost.XGBRegressor, sklearn API
TENSOR_MODEL = "flavor_tensor_pickle"        # tensor signature, sklearn saved with pickle
ONNX_MODEL = "flavor_onnx"                   # mlflow.onnx: a scikit-learn pipeline skl2onnx converted
ONNX_CLASSIFIER_MODEL = "flavor_onnx_classifier"  # mlflow.onnx: a forest skl2onnx converted, with its ZipMap
ONNX_COLUMNS_MODEL = "flavor_onnx_columns"   # mlflow.onnx: a mixed-type pipeline, one [N, 1] input per column
ONNX_TEXT_MODEL = "flavor_onnx_text"         # mlflow.onnx: TF-IDF + LogisticRegression, lowercasing its text
CUSTOM_MODEL = "flavor_custom_pyfunc"        # PythonModel needing a package the runtime lacks
RAISING_MODEL = "planted_raises"             # PythonModel raising on one input class
NAN_MODEL = "planted_nan"                    # PythonModel answering NaN for some valid inputs
NO_START_MODEL = "planted_no_start"          # PythonModel whose load_context fails where it is served
NESTED_MODEL = "flavor_nested_params"        # PythonModel with array, object and map columns and inference params
RAISING_KIND = "BUS"                         # an input class RAISING_MODEL raises on: any unseen segment
WORKING_MODELS = (COLUMNS_MODEL, LIGHTGBM_MODEL, XGBOOST_MODEL, TENSOR_MODEL, ONNX_MODEL, ONNX_CLASSIFIER_MODEL,
                  ONNX_COLUMNS_MODEL, ONNX_TEXT_MODEL, CUSTOM_MODEL, NESTED_MODEL)


def _pins(*names: str) -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


NATIVE_REQUIREMENTS = _pins("scikit-learn", "cloudpickle", "lightgbm", "xgboost-cpu", "pandas")
PYFUNC_REQUIREMENTS = _pins("mlflow", "cloudpickle", "pandas", "sortedcontainers")
ONNX_REQUIREMENTS = _pins("onnx", "onnxruntime")


def _frame(rng: np.random.Generator, n: int = 400) -> pd.DataFrame:
    return pd.DataFrame({"distance km": rng.gamma(2.0, 3.0, n), "hour": rng.integers(0, 24, n).astype("int64"),
                         "segment": rng.choice(["TAXI", "PHV"], n)})


def _target(frame: pd.DataFrame) -> np.ndarray:
    return (3.0 + 1.4 * frame["distance km"] + 0.1 * frame["hour"] + (frame["segment"] == "TAXI") * 2.0).to_numpy()


def _columns_model(frame: pd.DataFrame, target: np.ndarray):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    encode = ColumnTransformer([("numeric", StandardScaler(), ["distance km", "hour"]),
                                ("segment", OneHotEncoder(handle_unknown="ignore"), ["segment"])])
    return make_pipeline(encode, Ridge()).fit(frame, target)


class SortedRank:
    """A custom model needing `sortedcontainers`: each row's distance rank among reference trips."""

    def __init__(self, reference: list[float]):
        self.reference = reference

    def rank(self, values: pd.Series) -> list[float]:
        from sortedcontainers import SortedList

        ordered = SortedList(self.reference)
        return [ordered.bisect_left(value) / len(ordered) for value in values]


def _python_model(kind: str):
    import mlflow.pyfunc

    class FactoryTestModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            # Like a model whose weights are mounted only in production: it loads at build time (golden
            # predictions) and fails in the Bento, whose working directory holds bentofile.yaml.
            if kind == "no_start" and Path("bentofile.yaml").exists():
                raise FileNotFoundError("weights volume /mnt/weights is not mounted")

        def predict(self, context, model_input: pd.DataFrame, params=None):
            unseen = sorted(set(model_input["segment"]) - {"TAXI", "PHV"})
            if kind == "raises" and unseen:
                raise ValueError(f"segments {unseen} were never seen in training")
            if kind == "nan":
                return np.log(model_input["distance km"].to_numpy() - 1.0)  # NaN below 1 km: a real bug
            return np.asarray(SortedRank([1.0, 2.5, 4.0, 8.0, 15.0]).rank(model_input["distance km"]))

    return FactoryTestModel()


def _nested_model():
    """A trip scorer taking a fare history (array of doubles), the trip (an object with a list of stops and
    an optional note) and fees (a map), scaled by its `surge` param, plus one per `tags` param."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Map, Object, ParamSchema, ParamSpec, Property, Schema

    class TripScorer(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: pd.DataFrame, params=None):
            return [float(np.sum(history)) * params["surge"] + len(trip["stops"]) + sum(fees.values())
                    + len(params["tags"]) for history, trip, fees in
                    zip(model_input["history"], model_input["trip"], model_input["fees"])]

    trip = Object([Property("segment", DataType.string), Property("stops", Array(DataType.long)),
                   Property("note", DataType.string, required=False)])
    signature = ModelSignature(
        inputs=Schema([ColSpec(Array(DataType.double), "history"), ColSpec(trip, "trip"),
                       ColSpec(Map(DataType.double), "fees")]),
        outputs=Schema([ColSpec(DataType.double)]),
        params=ParamSchema([ParamSpec("surge", DataType.double, 1.0), ParamSpec("tags", DataType.string, [], (-1,))]))
    return TripScorer(), signature


def _columns_graph(pipeline):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType, StringTensorType

    return convert_sklearn(pipeline, initial_types=[("distance km", DoubleTensorType([None, 1])),
                                                    ("hour", Int64TensorType([None, 1])),
                                                    ("segment", StringTensorType([None, 1]))])


def _text_graph(rng: np.random.Generator):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    words = np.array(["Fast", "slow", "CLEAN", "late", "friendly", "Café", "driver", "car"])
    reviews = [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(300)]
    liked = ["fast" in review.lower() or "friendly" in review for review in reviews]
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(reviews, liked)
    return to_onnx(pipeline, initial_types=[("review", StringTensorType([None, 1]))])


def register_flavors(registry: Path) -> None:
    import lightgbm
    import mlflow
    import mlflow.onnx
    import xgboost
    from mlflow.models import infer_signature
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mlflow.set_tracking_uri(f"sqlite:///{registry.resolve() / 'mlflow.db'}")
    artifacts = (registry / "artifacts").resolve().as_uri()
    experiment = mlflow.get_experiment_by_name("model-factory-flavors") or mlflow.get_experiment(
        mlflow.create_experiment("model-factory-flavors", artifact_location=artifacts))
    rng = np.random.default_rng(11)
    frame = _frame(rng)
    target = _target(frame)
    numeric = frame[["distance km", "hour"]].astype("float64")
    signature = infer_signature(frame, target)

    def log(name: str, flavor, model, sig, requirements: list[str], **extra) -> None:
        model_argument = {"python_model": model} if flavor is mlflow.pyfunc else {}
        with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=name):
            flavor.log_model(*([] if model_argument else [model]), name="model", signature=sig,
                             registered_model_name=name, pip_requirements=requirements, **model_argument, **extra)

    log(COLUMNS_MODEL, mlflow.sklearn, _columns_model(frame, target), signature, NATIVE_REQUIREMENTS,
        serialization_format="cloudpickle")
    booster = lightgbm.train({"objective": "regression", "verbose": -1, "num_leaves": 8},
                             lightgbm.Dataset(numeric, target), num_boost_round=20)
    log(LIGHTGBM_MODEL, mlflow.lightgbm, booster, infer_signature(numeric, target), NATIVE_REQUIREMENTS)
    regressor = xgboost.XGBRegressor(n_estimators=20, max_depth=3).fit(numeric, target)
    log(XGBOOST_MODEL, mlflow.xgboost, regressor, infer_signature(numeric, target), NATIVE_REQUIREMENTS)
    tensor = numeric.to_numpy()
    log(TENSOR_MODEL, mlflow.sklearn, LinearRegression().fit(tensor, target), infer_signature(tensor, target),
        NATIVE_REQUIREMENTS, serialization_format="pickle")
    scaled = make_pipeline(StandardScaler(), LinearRegression()).fit(numeric, target)
    log(ONNX_MODEL, mlflow.onnx, to_onnx(scaled, numeric.to_numpy()[:1]), infer_signature(numeric, target),
        ONNX_REQUIREMENTS)
    # skl2onnx's default output for a classifier: a ZipMap's {class: probability} per row, the float32 graph fed the
    # signature's double columns (MLflow's pyfunc casts them)
    trip = np.array(["short", "medium", "long"])[np.digitize(frame["distance km"], [4.0, 9.0])]
    forest = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(numeric.to_numpy(), trip)
    log(ONNX_CLASSIFIER_MODEL, mlflow.onnx, to_onnx(forest, numeric.to_numpy()[:1].astype(np.float32)),
        infer_signature(numeric, forest.predict_proba(numeric.to_numpy())), ONNX_REQUIREMENTS)
    # A table of mixed types converts to one [N, 1] input per column (a string tensor beside number tensors), logged
    # with the signature of the frame it was fit on, as a table model usually is: MLflow's own pyfunc raises on every
    # frame such a model is given (factory/tensor_columns.py).
    log(ONNX_COLUMNS_MODEL, mlflow.onnx, _columns_graph(_columns_model(frame, target)), signature, ONNX_REQUIREMENTS)
    # A vectorizer's lowercasing converts to a StringNormalizer naming no locale, which onnxruntime opens as en_US.UTF-8
    # (factory/onnx_locale.py); unsigned, its one string input is its column.
    log(ONNX_TEXT_MODEL, mlflow.onnx, _text_graph(rng), None, ONNX_REQUIREMENTS)
    for name, kind in ((CUSTOM_MODEL, "custom"), (RAISING_MODEL, "raises"), (NAN_MODEL, "nan"),
                       (NO_START_MODEL, "no_start")):
        log(name, mlflow.pyfunc, _python_model(kind), infer_signature(frame, target), PYFUNC_REQUIREMENTS)
    log(NESTED_MODEL, mlflow.pyfunc, *_nested_model(), PYFUNC_REQUIREMENTS)


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    register_flavors(Path(sys.argv[1]))
