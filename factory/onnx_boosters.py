"""LightGBM and XGBoost to ONNX as their libraries compute: onnxmltools' converters, through factory/onnx_trees.py's
tree container.

onnxmltools 1.16 (with skl2onnx 1.20, lightgbm 4.7, xgboost 3.2) left these models native or wrong:
- LightGBM compares a double input with double thresholds and sums double leaves; onnxmltools writes both as float32
  attributes, so every input between a threshold and its float32 rounding (3.555 against float32(3.555)) took the
  other branch: a model split between prices with cents was exact in neither precision. On a double input the
  thresholds and leaves are now double tensors (ai.onnx.ml 3's `*_as_tensor`), compared and summed in double.
- onnxmltools refuses a double input to a LightGBM classifier (its shape calculator takes float only), and a
  classifier fit on booleans (it encodes the labels as strings).
- LightGBM splits missing values from all others at an infinite threshold, which its dump writes as 1e300: a value
  above 1e300 took the missing values' branch. Such thresholds are infinite again.
- onnxruntime's LOGISTIC computes a probability under 0.5 as 1 - p in float32, 2.7e-06 relative off at 0.024, beyond
  the default tolerance for a binary Booster's `predict` (P(class 1) alone): on a double input the margin goes through
  a Sigmoid in double (factory/onnx_trees.py).
- A feature whose zero is missing (`zero_as_missing`, sparse data) sends 0.0 by `default_left`, which no ONNX tree
  expresses; linear trees' leaves are linear models; onnxmltools averages a LightGBM random forest as if it had 100
  trees. All three are refused, saying so.
- skl2onnx knew neither library's scikit-learn estimators, so a pipeline ending in `LGBMClassifier` or
  `XGBRegressor` (or one logged with `mlflow.sklearn`) never converted. They are registered with it now.
- XGBoost casts its input to float32 and compares in float32: on a double input (a scaler's output in a pipeline)
  the tree node gets that cast, so it compares as XGBoost does; onnxmltools' classifiers refused a double input.
- XGBoost sums from its base score, adding each tree's leaf in float32; onnxruntime adds the base after the trees,
  which rounds otherwise: a regression's answer near zero was 2.6e-05 relative off, so every XGBoost regression
  whose answers change sign served natively. The base now goes into each target's first tree's leaves (bit for bit
  XGBoost's sums, while onnxruntime runs one thread, as the pod's does), which also lets a binary Booster's
  probability be a sigmoid of its margin in double, as LightGBM's.
- A Booster predicts on a DMatrix, which refuses infinity, so a double beyond float32's range: its compiled forms
  refuse those rows too (`dmatrix_guard`).
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable

import numpy as np

from factory import guard
from factory.onnx_convert import ONNXMLTOOLS_OPSET, NotConvertible
from factory.onnx_trees import Rewrite, TreeContainer

DUMPED_INFINITY = 1e300  # what `Booster.dump_model()` writes for an infinite threshold

# The scikit-learn estimators of both libraries: they take NaN and infinity alike, where sklearn's check_array refuses.
ESTIMATORS = ("LGBMClassifier", "LGBMRegressor", "LGBMRanker", "XGBClassifier", "XGBRegressor")
# onnxmltools' names of what it converts
LIGHTGBM_ALIASES = ("LgbmClassifier", "LgbmRegressor", "LgbmRanker")
XGBOOST_ALIASES = ("XGBClassifier", "XGBRFClassifier", "XGBRegressor", "XGBRFRegressor")
CLASSIFIER_OPTIONS = {"nocl": [True, False], "zipmap": [True, False, "columns"]}


def validates_nothing(estimator: Any) -> bool:
    """Whether this step answers any number, infinity and NaN included (LightGBM compares them, XGBoost too)."""
    return type(estimator).__name__ in ESTIMATORS


def lightgbm_onnx(model: Any, types: list) -> Any:
    """A model logged with `mlflow.lightgbm` (a Booster or LightGBM's scikit-learn estimator), as LightGBM computes."""
    import onnxmltools
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

    converter = _as_lightgbm_computes(convert_lightgbm)
    onnx_model = onnxmltools.convert_lightgbm(
        _integer_labels(model), initial_types=types, target_opset=ONNXMLTOOLS_OPSET, zipmap=False,
        custom_conversion_functions={alias: converter for alias in LIGHTGBM_ALIASES},
        custom_shape_calculators=_shape_calculators(LIGHTGBM_ALIASES))
    for output in onnx_model.graph.output:  # onnxmltools declares a classifier's labels as one row: onnxruntime
        for rows in output.type.tensor_type.shape.dim[:1]:  # warned on every run of more
            rows.Clear()
    return onnx_model


def xgboost_onnx(model: Any, types: list) -> Any:
    """A model logged with `mlflow.xgboost` (a Booster or XGBoost's scikit-learn estimator), as XGBoost computes."""
    import onnxmltools
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

    converter = _as_xgboost_computes(convert_xgboost)
    return onnxmltools.convert_xgboost(unnamed(model), initial_types=types, target_opset=ONNXMLTOOLS_OPSET,
                                       custom_conversion_functions={alias: converter for alias in XGBOOST_ALIASES},
                                       custom_shape_calculators=_shape_calculators(XGBOOST_ALIASES))


def dmatrix_guard(model: Any, onnx_model: Any, precision: str) -> str:
    """The guard output of an XGBoost model's ONNX form, once its outputs are chosen: a Booster predicts on a DMatrix,
    which refuses infinity, also a double beyond float32's range; XGBoost's estimators predict in place, which takes
    it."""
    if type(model).__name__ != "Booster":
        return ""
    read = guard.AS_FLOAT32 if precision == "float64" else "float"
    return guard.add(onnx_model, [(onnx_model.graph.input[0].name, read, False)])


@functools.cache
def register() -> None:
    """skl2onnx: both libraries' scikit-learn estimators, inside a pipeline or on their own (once per process)."""
    from lightgbm import LGBMClassifier, LGBMRanker, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                  calculate_linear_regressor_output_shapes)
    from xgboost import XGBClassifier, XGBRegressor

    lightgbm, xgboost = _as_lightgbm_computes(convert_lightgbm), _as_xgboost_computes(convert_xgboost)
    for estimator, alias, convert in ((LGBMClassifier, "LightGbmLGBMClassifier", lightgbm),
                                      (LGBMRegressor, "LightGbmLGBMRegressor", lightgbm),
                                      (LGBMRanker, "LightGbmLGBMRanker", lightgbm),
                                      (XGBClassifier, "XGBoostXGBClassifier", xgboost),
                                      (XGBRegressor, "XGBoostXGBRegressor", xgboost)):
        classifier = alias.endswith("Classifier")
        update_registered_converter(
            estimator, alias,
            calculate_linear_classifier_output_shapes if classifier else calculate_linear_regressor_output_shapes,
            convert, options=CLASSIFIER_OPTIONS if classifier else None, overwrite=True)


def _as_lightgbm_computes(native: Callable) -> Callable:
    def convert(scope: Any, operator: Any, container: Any) -> None:
        booster = getattr(operator.raw_operator, "booster_", operator.raw_operator)
        trees = TreeContainer(scope, operator, container, _lightgbm_reading(booster.dump_model()))
        return native(scope, _with_model(operator, _integer_labels(operator.raw_operator)), trees)

    return convert


def _as_xgboost_computes(native: Callable) -> Callable:
    def convert(scope: Any, operator: Any, container: Any) -> None:
        trees = TreeContainer(scope, operator, container, _base_first, float_input=True)
        return native(scope, _with_model(operator, unnamed(operator.raw_operator)), trees)

    return convert


def _base_first(attrs: dict) -> dict:
    """A sum as XGBoost makes it: from its base score (per class), each tree's leaf added in float32, in order.
    onnxruntime adds the base after the trees, which rounds otherwise (a regression's answer near zero 2.6e-05 relative
    off): the base goes into each target's first tree's leaves, where XGBoost's first float32 addition puts it."""
    kind = "target" if "target_weights" in attrs else "class"
    ids, trees, weights = attrs[f"{kind}_ids"], attrs[f"{kind}_treeids"], attrs[f"{kind}_weights"]
    bases = np.asarray(attrs.get("base_values", ()), dtype=np.float32).ravel()
    if not bases.size or bases.size != len(set(ids)):
        return attrs
    first = {}
    for target, tree in zip(ids, trees):
        first[target] = min(first.get(target, tree), tree)
    attrs[f"{kind}_weights"] = [float(bases[target] + np.float32(weight)) if tree == first[target]
                                else weight for target, tree, weight in zip(ids, trees, weights)]
    del attrs["base_values"]
    return attrs


def _lightgbm_reading(dumped: dict) -> Rewrite:
    """A tree node's attributes as LightGBM reads its splits: a threshold the dump writes as ±1e300 is infinite
    (`AvoidInf`: LightGBM splits missing values from all others at +inf), so 1.0000000000000002e300 goes left as
    1e300 does. Refuses what no ONNX tree computes."""
    if dumped.get("average_output"):
        raise NotConvertible("a LightGBM random forest (boosting 'rf'), whose trees onnxmltools 1.16 averages as if "
                             "there were 100")
    for node in _splits(dumped):
        if node["missing_type"] == "Zero":
            raise NotConvertible(f"a LightGBM model treating zero as missing on feature {node['split_feature']} "
                                 "(zero_as_missing, or sparse training data), which ONNX trees cannot express")

    def rewrite(attrs: dict) -> dict:
        attrs["nodes_values"] = [math.copysign(math.inf, value) if abs(value) >= DUMPED_INFINITY else value
                                 for value in attrs["nodes_values"]]
        return attrs

    return rewrite


def _splits(dumped: dict) -> list[dict]:
    """Every split node of a `Booster.dump_model()`; a linear tree's leaf (a linear model) is refused on the way."""
    found, pending = [], [tree["tree_structure"] for tree in dumped["tree_info"]]
    while pending:
        node = pending.pop()
        if node.get("leaf_coeff"):
            raise NotConvertible("a LightGBM model with linear trees (linear_tree), whose leaves ONNX trees cannot "
                                 "express")
        if "split_index" in node:
            found.append(node)
            pending += [node["left_child"], node["right_child"]]
    return found


def _integer_labels(model: Any) -> Any:
    """A LightGBM classifier fit on booleans, relabelled 0 and 1 (onnxmltools would encode its labels as strings); the
    caller casts the labels back to booleans."""
    classes = getattr(model, "classes_", None) if hasattr(model, "predict_proba") else None
    if classes is None or np.asarray(classes).dtype != np.bool_:
        return model
    model = copy.copy(model)
    model._classes = np.asarray(classes, dtype=np.int64)
    return model


def unnamed(model: Any) -> Any:
    """An XGBoost model whose features are positional: onnxmltools reads trees only with names f0, f1, …; the
    feed is in signature order, which is the order the model was fit in."""
    model = copy.deepcopy(model)
    booster = model if type(model).__name__ == "Booster" else model.get_booster()
    booster.feature_names = None
    return model


def _with_model(operator: Any, model: Any) -> Any:
    """The operator as skl2onnx parsed it, converting `model` in place of the estimator as fit."""
    if model is operator.raw_operator:
        return operator
    operator = copy.copy(operator)
    operator.raw_operator = model
    return operator


def _shape_calculators(aliases: tuple) -> dict:
    """onnxmltools' own, for the aliases given a converter here: it infers no output types for an operator with a
    custom converter unless told how."""
    from onnxmltools.convert.common._registration import get_shape_calculator

    return {alias: _double_accepted(get_shape_calculator(alias)) for alias in aliases}


def _double_accepted(calculate: Callable) -> Callable:
    """onnxmltools' shapes, for a double input too: its classifiers refuse one only because their converters write
    float thresholds, which the tree container makes double (LightGBM) or feeds a float cast of the input (XGBoost)."""
    def shapes(operator: Any) -> None:
        from onnxmltools.convert.common.data_types import FloatTensorType

        given = operator.inputs[0].type
        if type(given).__name__ != "DoubleTensorType":
            return calculate(operator)
        operator.inputs[0].type = FloatTensorType(given.shape)
        try:
            calculate(operator)
        finally:
            operator.inputs[0].type = given

    return shapes
