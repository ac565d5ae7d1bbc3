"""Registry models → ONNX candidates: skl2onnx for sklearn, onnxmltools for LightGBM and XGBoost.

Each model is tried in double precision first (what sklearn and LightGBM compute in; tree ensembles as their
libraries compute them: scikit-learn's as factory/onnx_trees.py writes them, LightGBM's and XGBoost's as
factory/onnx_boosters.py does, XGBoost's through a float32 cast), then in single precision.
`factory/compiled.py` keeps the first candidate that reproduces the registry model's own predictions. A candidate
is the ONNX bytes plus how request rows feed its inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from factory import guard, onnx_locale
from factory.registry import ONNX_MODEL

# ai.onnx.ml 3 holds the tree operators every converter here emits; onnxruntime 1.32 runs both.
OPSETS = {"": 17, "ai.onnx.ml": 3}
ONNXMLTOOLS_OPSET = 15  # the highest onnxmltools 1.16's LightGBM and XGBoost converters support
PRECISIONS = ("float64", "float32")
NUMERIC = {"double", "float", "long", "integer", "boolean"}


class NotConvertible(Exception):
    """This model has no ONNX form here; the message says why (it is shown in the build output)."""


@dataclass(frozen=True)
class Candidate:
    precision: str
    onnx: bytes
    feeds: list  # [[ONNX input name, numpy dtype, [signature columns] or None for a tensor], ...]
    output: str  # the ONNX output answering the flavor's predict_fn
    guard: str = ""  # the ONNX output flagging rows the registry model refuses (sklearn's, a DMatrix's checks), if any
    outputs: tuple = ()  # instead of `output`: every output, one {name: value} record per row (factory/onnx_graph.py)
    flat: bool = False  # those outputs reshaped to one value per row
    converted: bool = True  # False: the registry model's own graph
    maps: tuple = ()  # (output, class labels) per output answered as one {label: probability} map per row

    @property
    def label(self) -> str:
        """How the build output names it."""
        return f"ONNX {self.precision}" if self.converted else "its own ONNX graph"


def candidates(model: Any, flavor: dict, signature: dict) -> Iterator[Candidate | NotConvertible]:
    """Per precision: a Candidate, or the NotConvertible saying why that precision has none. An mlflow.onnx model
    has one: its own graph."""
    if flavor.get("model_class") == ONNX_MODEL:
        from factory import onnx_graph  # it names this module's Candidate

        try:
            yield onnx_graph.candidate(model, signature, bool(flavor.get("feeds")))
        except NotConvertible as exc:
            yield NotConvertible(f"its own ONNX graph: {exc}")
        except Exception as exc:  # protobuf's, on a graph it cannot serialize (over 2 GB)
            yield NotConvertible(f"its own ONNX graph: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return
    for precision in PRECISIONS:
        try:
            yield _convert(model, flavor, signature, precision)
        except NotConvertible as exc:
            yield NotConvertible(f"ONNX {precision}: {exc}")
        except Exception as exc:  # converters raise anything on a model they do not handle
            yield NotConvertible(f"ONNX {precision}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")


def _convert(model: Any, flavor: dict, signature: dict, precision: str) -> Candidate:
    loader = flavor["loader"]
    sklearn = loader in ("skops", "pickle", "cloudpickle")
    if loader not in ("skops", "pickle", "cloudpickle", "lightgbm", "xgboost"):
        raise NotConvertible(f"flavor '{loader}' has no ONNX converter (only sklearn, LightGBM and XGBoost do)")
    # Only skl2onnx picks columns by name; the boosters' converters take one matrix in signature order.
    feeds, types = _feeds(model, signature["inputs"], precision, by_name=sklearn)
    from factory import onnx_boosters  # it names this module's NotConvertible

    guard = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sklearn:
            onnx_model, guard = _sklearn_onnx(model, types)
        else:
            onnx_model = (onnx_boosters.lightgbm_onnx if loader == "lightgbm" else onnx_boosters.xgboost_onnx)(model,
                                                                                                         types)
    # Converters may rename inputs ("surge multiplier" → "surge_multiplier"); their order is kept.
    names = [graph_input.name for graph_input in onnx_model.graph.input]
    if len(names) != len(feeds):
        raise NotConvertible(f"the ONNX graph takes {len(names)} inputs for {len(feeds)} fed")
    feeds = [[name, *feed[1:]] for name, feed in zip(names, feeds)]
    output = (_booster_output(onnx_model) if type(model).__name__ == "Booster"
              else _output(onnx_model, flavor.get("predict_fn", "predict")))
    if output == onnx_model.graph.output[0].name and _boolean_classes(model):
        output = _as_booleans(onnx_model, output)
    if loader == "xgboost":
        guard = onnx_boosters.dmatrix_guard(model, onnx_model, precision)
    onnx_locale.portable(onnx_model)  # a vectorizer's lowercasing opens without en_US.UTF-8
    return Candidate(precision, onnx_model.SerializeToString(), feeds, output, guard)


def _feeds(model: Any, inputs: list[dict], precision: str, by_name: bool) -> tuple[list, list]:
    """How rows feed the ONNX inputs: one matrix of every column when all are numbers and the model
    selects none by name; else one input per column, named as the column (a ColumnTransformer picks
    its columns by those names, or by position across the inputs in order)."""
    if by_name:
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType
    else:  # onnxmltools' XGBoost converter checks types against its own classes, refusing skl2onnx's
        from onnxmltools.convert.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    number = DoubleTensorType if precision == "float64" else FloatTensorType
    if inputs and inputs[0].get("type") == "tensor":
        shape = inputs[0]["tensor-spec"]["shape"]
        if len(shape) != 2:
            raise NotConvertible(f"a tensor input of shape {shape} (only [rows, features] converts)")
        return [["X", precision, None]], [("X", number([None, shape[1]]))]
    names = [spec.get("name", f"c{index}") for index, spec in enumerate(inputs)]
    kinds = [spec["type"] for spec in inputs]
    if all(kind in NUMERIC for kind in kinds) and not (by_name and _picks_columns(model)):
        return [["X", precision, names]], [("X", number([None, len(names)]))]
    if not by_name:
        raise NotConvertible("string input columns (this converter takes numbers only)")
    unsupported = sorted({kind for kind in kinds if kind not in NUMERIC | {"string"}})
    if unsupported:
        raise NotConvertible(f"input columns of type {', '.join(unsupported)} have no ONNX feed here")
    feeds = [[name, "object" if kind == "string" else precision, [name]] for name, kind in zip(names, kinds)]
    types = [(name, StringTensorType([None, 1]) if kind == "string" else number([None, 1]))
             for name, kind in zip(names, kinds)]
    return feeds, types


def _picks_columns(model: Any) -> bool:
    """Whether a ColumnTransformer inside picks columns by name; any other model fit on a DataFrame
    (its `feature_names_in_` set) takes one matrix, as skl2onnx converts a bare estimator only so."""
    from sklearn.compose import ColumnTransformer

    parts = [model, *model.get_params(deep=True).values()] if hasattr(model, "get_params") else [model]
    return any(isinstance(part, ColumnTransformer) for part in parts)


def _sklearn_onnx(model: Any, types: list) -> tuple[Any, str]:
    """The ONNX model and its guard output: every sklearn step checks its input as `check_array` does (no infinity;
    no NaN unless the step takes missing values), so the registry model raises where the graph would go on."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    from factory import onnx_boosters, onnx_double, onnx_functions, onnx_trees  # they name this module's NotConvertible

    for module in (onnx_double, onnx_functions, onnx_trees, onnx_boosters):
        module.register()
    onnx_model, topology = convert_sklearn(model, initial_types=types, options=onnx_double.classifier_options(model),
                                           target_opset=OPSETS, intermediate=True,
                                           custom_parsers={**onnx_double.parsers(), **onnx_functions.parsers()})
    onnx_functions.refuse_trees_after_logarithms(onnx_model)
    checked: dict[tuple[str, str], bool] = {}
    for operator in topology.unordered_operator_iterator():
        tags = getattr(operator.raw_operator, "__sklearn_tags__", None)
        # The converter's own glue (concatenations) is no sklearn step; a step skipping validation (a
        # FunctionTransformer, as skl2onnx writes a ColumnTransformer's "passthrough") checks nothing, and nor do
        # LightGBM's and XGBoost's estimators.
        if tags is None or tags().no_validation or onnx_boosters.validates_nothing(operator.raw_operator):
            continue
        for variable in operator.inputs:
            if isinstance(variable.type, (DoubleTensorType, FloatTensorType)):
                double = isinstance(variable.type, DoubleTensorType)
                read = guard.AS_FLOAT32 if onnx_trees.reads_float32(operator.raw_operator) else "double"
                key = (variable.onnx_name, read if double else "float")
                checked[key] = checked.get(key, False) or not tags().input_tags.allow_nan
    return onnx_model, guard.add(onnx_model, [(name, dtype, nan) for (name, dtype), nan in sorted(checked.items())])


def _output(onnx_model: Any, predict_fn: str) -> str:
    names = [output.name for output in onnx_model.graph.output]
    if predict_fn == "predict":
        return names[0]
    wanted = {"predict_proba": "probabilities"}.get(predict_fn)
    if wanted not in names:
        raise NotConvertible(f"predict_fn '{predict_fn}' has no compiled output (outputs: {', '.join(names)})")
    return wanted


def _boolean_classes(model: Any) -> bool:
    """A classifier fit on booleans (`y = frame.converted`) predicts booleans; the converters label classes 0 and 1."""
    import numpy as np

    classes = getattr(model, "classes_", None)
    return classes is not None and np.asarray(classes).dtype == np.bool_


def _as_booleans(onnx_model: Any, labels: str) -> str:
    """The int64 labels cast to booleans, as the output the candidate answers with."""
    from onnx import TensorProto, helper

    booleans = guard.unique_name(onnx_model.graph, f"{labels}_as_booleans")
    onnx_model.graph.node.append(helper.make_node("Cast", [labels], [booleans], to=TensorProto.BOOL))
    onnx_model.graph.output.append(helper.make_tensor_value_info(booleans, TensorProto.BOOL, [None]))
    return booleans


def _booster_output(onnx_model: Any) -> str:
    """What a raw Booster's `predict` answers (`lightgbm.train`, `xgboost.train`): for a binary objective the
    probability of class 1, which the converters emit only as column 1 of `probabilities` (a Gather is added
    for it); for a multiclass one every class's probability; for a regression its value. Other outputs are
    dropped from the graph. An objective answering something else (raw margins, class indices) does not
    reproduce the registry model, and the exactness check keeps it native."""
    from onnx import TensorProto, helper

    outputs = {output.name: output for output in onnx_model.graph.output}
    chosen = "probabilities" if "probabilities" in outputs else onnx_model.graph.output[0].name
    dims = outputs[chosen].type.tensor_type.shape.dim
    kept = [outputs[chosen]]
    if chosen == "probabilities" and len(dims) == 2 and dims[1].dim_value == 2:
        chosen = "positive_class_probability"
        onnx_model.graph.initializer.append(helper.make_tensor("positive_class", TensorProto.INT64, [], [1]))
        onnx_model.graph.node.append(helper.make_node("Gather", ["probabilities", "positive_class"], [chosen], axis=1))
        kept = [helper.make_tensor_value_info(chosen, outputs["probabilities"].type.tensor_type.elem_type,
                                              [None])]
    del onnx_model.graph.output[:]
    onnx_model.graph.output.extend(kept)
    return chosen
