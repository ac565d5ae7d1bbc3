"""skl2onnx's tree ensembles, made to compute as scikit-learn does.

skl2onnx 1.20 (with onnx 1.23 and onnxruntime 1.32) gets four things wrong for scikit-learn's trees:
- it writes HistGradientBoosting's missing-value directions as Python booleans, which onnx refuses ("Expected an
  int, got a boolean"), so no HistGradientBoosting model converted at all;
- on a double input it still writes thresholds, leaf weights and base values as float32 attributes, so an input
  between a threshold and its float32 rounding takes the other branch (it computes each threshold as a double,
  moved where scikit-learn's float32 cast of the input would put it, then rounds it to float32);
- it declares a double output that onnxruntime's TreeEnsembleRegressor (ai.onnx.ml 3) never produces, so no
  double form of a tree regression loaded, and forests fell back to float32 leaf sums (an absolute error that
  leaves answers near zero off by more than any relative tolerance: `factory/precision.py`);
- it sends every missing value right in a decision tree or forest, where scikit-learn sends it where the tree learned
  to (to the larger child where it saw none), so a request missing an optional column was answered otherwise.

Each tree converter here is skl2onnx's own, writing through a container that changes the one tree node it adds: the
missing-value directions become integers, a decision tree's or forest's as it learned them; on a double input the
thresholds, weights and base values become double tensors (ai.onnx.ml 3's `*_as_tensor` attributes: onnxruntime then
compares and sums in double, as scikit-learn does), and a double output is cast from the float the operator answers.
That float rounding is 2**-24 of each answer, within the default `compile.rtol`; a tighter tolerance keeps the model
native, as the exactness check decides. A regression on a log link (HistGradientBoosting's poisson and gamma losses,
which skl2onnx answered as the raw sum) goes through Exp, where the rounding of the sum is 2**-24 of its value in
the answer's relative error. Every converter is called at ai.onnx.ml 3, which brought those attributes: at version
1, skl2onnx's default, some round every attribute to float32 before writing it. skl2onnx's double thresholds already
sit where scikit-learn's float32 cast of the input puts them (`sklearn_threshold`), so the input is compared as it
comes. factory/onnx_boosters.py writes LightGBM's and XGBoost's trees through the same container.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
from onnx import TensorProto

from factory.onnx_convert import NotConvertible

# Estimators scikit-learn casts the input of to float32 (`check_array(X, dtype=DTYPE)`): every tree model but
# HistGradientBoosting, which compares the float64 input.
FLOAT32_TREES = tuple(f"{name}{kind}" for name in ("DecisionTree", "ExtraTree", "ExtraTrees", "RandomForest",
                                                   "GradientBoosting") for kind in ("Classifier", "Regressor"))
CONVERTERS = tuple(f"Sklearn{name}" for name in (*FLOAT32_TREES, "HistGradientBoostingClassifier",
                                                 "HistGradientBoostingRegressor"))
AS_TENSOR = ("nodes_values", "target_weights", "class_weights", "base_values")
DIRECTIONS = "nodes_missing_value_tracks_true"
ML_OPSET = 3
Rewrite = Callable[[dict], dict]  # a tree node's attributes, as the converter wrote them → as its library reads them


@functools.cache
def register() -> None:
    """Wrap skl2onnx's tree converters (once per process: skl2onnx's registry is global)."""
    from skl2onnx.common._registration import get_converter, register_converter

    for alias in CONVERTERS:
        native = get_converter(alias)
        register_converter(alias, _as_sklearn_computes(native), overwrite=True, options=native.get_allowed_options())


def reads_float32(estimator: Any) -> bool:
    """Whether scikit-learn casts this estimator's input to float32: a finite double beyond float32's range is
    infinity to it, and raises."""
    return type(estimator).__name__ in FLOAT32_TREES


def _as_sklearn_computes(native: Any) -> Callable:
    def convert(scope: Any, operator: Any, container: Any) -> None:
        trees = TreeContainer(scope, operator, container, _missing_directions(operator.raw_operator))
        _refuse_categorical_splits(operator.raw_operator)
        if trees.double:
            _refuse_unbounded_thresholds(operator.raw_operator)
        return native._fct(scope, operator, trees, op_version=ML_OPSET)

    return convert


def _refuse_categorical_splits(model: Any) -> None:
    """skl2onnx reads every HistGradientBoosting split as `value <= threshold`, also a split on a categorical
    feature (a set of categories), which would answer silently wrong."""
    predictors = getattr(model, "_predictors", ())
    if any(tree.nodes["is_categorical"].any() for trees in predictors for tree in trees):
        raise NotConvertible("a HistGradientBoosting model splitting on categorical features (skl2onnx converts "
                             "numeric splits only)")


def _refuse_unbounded_thresholds(model: Any) -> None:
    """A tree fit on missing values splits "every value left, missing right" at an infinite threshold, where
    skl2onnx's double conversion loops forever (its bisection towards float32 neighbours compares NaNs)."""
    estimators = [model] if hasattr(model, "tree_") else np.asarray(getattr(model, "estimators_", []), dtype=object)
    trees = [estimator.tree_ for estimator in np.ravel(estimators) if hasattr(estimator, "tree_")]
    if any(not np.isfinite(tree.threshold).all() for tree in trees):
        raise NotConvertible("a tree split at an infinite threshold (a tree fit on missing values), which skl2onnx "
                             "converts in single precision only")


def _margin_answered(op_type: str, attrs: dict) -> bool:
    """Whether a binary classifier's probability is better answered as a sigmoid of its margin in double: onnxruntime's
    LOGISTIC computes a probability under 0.5 as 1 - p in float32 (2.7e-06 relative off at 0.024). Only where
    onnxruntime answers the margin m as [-m, m] without a post transform: two labels, one column of weights, some of
    them negative (all positive, it answers [1 - m, m]), no base values."""
    labels = len(attrs.get("classlabels_int64s", ())) + len(attrs.get("classlabels_strings", ()))
    return (op_type == "TreeEnsembleClassifier" and attrs.get("post_transform") == "LOGISTIC" and labels == 2
            and len(set(attrs.get("class_ids", ()))) == 1 and min(attrs.get("class_weights", ()), default=0) < 0
            and not len(attrs.get("base_values", ())))


def _missing_directions(model: Any) -> Rewrite | None:
    """Per node of the tree node's attributes (skl2onnx numbers a forest's trees as its estimators), whether a missing
    value goes left: a decision tree or forest sends it where it learned to (to the larger child where it saw none),
    and takes it at predict time. None for other models (gradient boosting refuses missing values;
    HistGradientBoosting's directions come from skl2onnx)."""
    if type(model).__name__ not in FLOAT32_TREES or type(model).__name__.startswith("GradientBoosting"):
        return None
    trees = [estimator.tree_.missing_go_to_left for estimator in ([model] if hasattr(model, "tree_")
                                                                  else model.estimators_)]

    def rewrite(attrs: dict) -> dict:
        attrs[DIRECTIONS] = [int(trees[tree][node])
                             for tree, node in zip(attrs["nodes_treeids"], attrs["nodes_nodeids"])]
        return attrs

    return rewrite


class TreeContainer:
    """A converter's container (skl2onnx's or onnxmltools') as its tree converter sees it: every call passes through,
    but the tree node it adds is written as the model's library computes it. `rewrite` gives the node's attributes as
    that library reads them (where missing values go, thresholds the converter misread); with `float_input`, a
    double input is cast to float for the node, whose attributes stay float (a library comparing in float32)."""

    def __init__(self, scope: Any, operator: Any, container: Any, rewrite: Rewrite | None = None,
                 float_input: bool = False) -> None:
        self._scope, self._container = scope, container
        self._rewrite, self._float_input = rewrite, float_input
        # skl2onnx and onnxmltools each have their own DoubleTensorType.
        self.double = type(operator.inputs[0].type).__name__ == "DoubleTensorType"
        # A regression on a log link (HistGradientBoosting's poisson and gamma losses) answers exp of its trees' sum.
        loss = getattr(operator.raw_operator, "_loss", None)
        self._exp = type(getattr(loss, "link", None)).__name__ == "LogLink" and not hasattr(operator.raw_operator,
                                                                                               "classes_")
        # Per output position of the tree node, whether the operator declares that output double.
        self._doubles = [type(variable.type).__name__ == "DoubleTensorType" for variable in operator.outputs]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, op_type: str, inputs: Any, outputs: Any, op_domain: str = "", **attrs: Any) -> Any:
        if not op_type.startswith("TreeEnsemble"):
            return self._container.add_node(op_type, inputs, outputs, op_domain=op_domain, **attrs)
        attrs["op_version"] = ML_OPSET  # which brought the `*_as_tensor` attributes
        if DIRECTIONS in attrs:
            attrs[DIRECTIONS] = [int(direction) for direction in attrs[DIRECTIONS]]
        attrs = self._rewrite(attrs) if self._rewrite else attrs
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        # A classifier's scores follow its labels; a regression answers scores only. Some converters write the
        # scores to an intermediate name and pass them on to the declared output, so go by position.
        score = 1 if op_type == "TreeEnsembleClassifier" else 0
        double = score < min(len(outputs), len(self._doubles)) and self._doubles[score]
        steps = [("Cast", {"to": TensorProto.DOUBLE})] if double else []
        steps += [("Exp", {})] if self._exp and op_type == "TreeEnsembleRegressor" else []
        if self.double and _margin_answered(op_type, attrs):
            attrs["post_transform"] = "NONE"
            steps = [("Cast", {"to": TensorProto.DOUBLE}), ("Sigmoid", {})]
            steps += [] if double else [("Cast", {"to": TensorProto.FLOAT})]
        if self.double and self._float_input:
            inputs = [self._as_float(inputs if isinstance(inputs, str) else inputs[0])]
        elif self.double:
            attrs = self._double_attributes(attrs)
        if steps:
            outputs[score] = self._answered(outputs[score], steps)
        return self._container.add_node(op_type, inputs, outputs, op_domain=op_domain, **attrs)

    def _double_attributes(self, attrs: dict) -> dict:
        from onnx import numpy_helper

        for name in AS_TENSOR:
            if name in attrs:
                values = np.asarray(attrs.pop(name), dtype=np.float64).ravel()
                attrs[f"{name}_as_tensor"] = numpy_helper.from_array(values)
        return attrs

    def _as_float(self, name: str) -> str:
        from onnx import TensorProto

        cast = self._scope.get_unique_variable_name(f"{name}_as_float")
        self._container.add_node("Cast", [name], [cast], name=self._scope.get_unique_operator_name("Cast"),
                                 to=TensorProto.FLOAT)
        return cast

    def _answered(self, name: str, steps: list) -> str:
        """The tree node's own output, passed on to `name` through `steps` (a cast from the float the operator gives
        to the double the converter declared, the inverse of a log link, a sigmoid in double)."""
        source = written = self._scope.get_unique_variable_name(f"{name}_trees")
        for index, (op_type, attrs) in enumerate(steps):
            target = name if index == len(steps) - 1 else self._scope.get_unique_variable_name(f"{name}_{op_type}")
            self._container.add_node(op_type, [source], [target], name=self._scope.get_unique_operator_name(op_type),
                                     **attrs)
            source = target
        return written
