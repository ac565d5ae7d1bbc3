"""skl2onnx's converters that fail or drop to float32 on a double input, made to compute as scikit-learn does.

scikit-learn computes in double, so a compiled form is exact only in double (factory/onnx_convert.py tries it
first); skl2onnx 1.20 writes some steps for float32 alone. Found by converting models nobody here trained:
- SimpleImputer emits ai.onnx.ml Imputer, which stores fill values as float32 and runs only on float32: on a double
  input, NaNs are filled with IsNaN + Where in double.
- LinearSVC and RidgeClassifier (their decision is a raw score, no probability) raise "post_transform 'NONE' is not
  supported with double": the raw scores are the answer there, and the label is their ArgMax, as scikit-learn takes
  it (a tie and an all-NaN row both pick the first class, as `score > 0` and numpy's argmax do).
- LinearSVC refuses the `zipmap` option skl2onnx's own pipeline parser gives every classifier step ("Option 'zipmap'
  not in ['nocl', 'output_class_labels', 'raw_scores']"), so no pipeline ending in one converted: it is accepted
  here, and means nothing for a classifier without probabilities.
- A ColumnTransformer's concatenation is declared, while parsing, with the type of its first part: behind a
  OneHotEncoder (float32) first, float32, though it computes double. Steps after it were declared float32 from it
  (a scaler computing double into a "float32" output onnxruntime does not load; a classifier choosing its float32
  LinearClassifier node): it is declared double where any part is.
- TargetEncoder maps each category to its encoding as float32 (a LabelEncoder's values_floats): an answer near zero
  was 4e-06 relative off on 2 of 2,000 ordinary rows while every row checked agreed. On a double graph each category
  maps to its index, and the index picks the encoding from a double table (the target mean for a category unseen).
- PolynomialFeatures writes its bias column as a float32 constant concatenated with double products (a graph
  onnxruntime does not load): the constant is written in the products' type.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from factory.onnx_convert import NotConvertible

# Classifiers whose converter answers raw scores (skl2onnx's post_transform NONE).
RAW_SCORE_CLASSIFIERS = ("LinearSVC", "RidgeClassifier", "RidgeClassifierCV")


@functools.cache
def register() -> None:
    """Replace the converters above in skl2onnx's registry (once per process: the registry is global)."""
    from skl2onnx.common._registration import get_converter, register_converter

    for alias, rewrite, options in (("SklearnSimpleImputer", _imputer, {}),
                                    ("SklearnLinearClassifier", _raw_scores, {}),
                                    ("SklearnLinearSVC", _raw_scores, {"zipmap": [True, False, "columns"]}),
                                    ("SklearnPolynomialFeatures", _polynomial, {}),
                                    ("SklearnTargetEncoder", _target_encoder, {})):
        native = get_converter(alias)
        allowed = native.get_allowed_options()
        register_converter(alias, rewrite(native), overwrite=True,
                           options={**allowed, **options} if allowed or options else None)


def classifier_options(model: Any) -> dict:
    """skl2onnx options for `model`: a classifier answers probabilities as a tensor, not ZipMap's list of maps (which
    takes float32 only, and which a pipeline otherwise gives every classifier step)."""
    from sklearn.base import is_classifier

    return {id(model): {"zipmap": False}} if is_classifier(model) or hasattr(model, "predict_proba") else {}


def parsers() -> dict:
    """skl2onnx `custom_parsers` for the parsing above."""
    from sklearn.compose import ColumnTransformer

    return {ColumnTransformer: _column_transformer}


def _column_transformer(scope: Any, model: Any, inputs: list, custom_parsers: Any = None) -> list:
    from skl2onnx._parse import _parse_sklearn_column_transformer
    from skl2onnx.common.data_types import DoubleTensorType

    outputs = _parse_sklearn_column_transformer(scope, model, inputs, custom_parsers=custom_parsers)
    # Only the concatenation of several parts: a lone part (a OneHotEncoder's float32) is its own output.
    parts = [part for operator in scope.operators.values()
             if operator.type == "SklearnConcat" and outputs[0] in operator.outputs for part in operator.inputs]
    if any(isinstance(part.type, DoubleTensorType) for part in parts):
        outputs[0].type = DoubleTensorType(outputs[0].type.shape)
    return outputs


def _double(operator: Any) -> bool:
    from skl2onnx.common.data_types import DoubleTensorType

    return isinstance(operator.inputs[0].type, DoubleTensorType)


def _imputer(native: Any) -> Callable:
    def convert(scope: Any, operator: Any, container: Any) -> None:
        import numpy as np
        from skl2onnx.operator_converters.common import concatenate_variables
        from skl2onnx.proto import onnx_proto

        imputer = operator.raw_operator
        if not _double(operator):
            return native(scope, operator, container)
        statistics = np.asarray(imputer.statistics_, dtype=np.float64)
        if imputer.add_indicator or not np.isnan(imputer.missing_values) or np.isnan(statistics).any():
            raise NotConvertible("a SimpleImputer with an indicator, a non-NaN missing value or an empty "
                                 "feature (double precision)")
        features = concatenate_variables(scope, operator.inputs, container)
        fill = scope.get_unique_variable_name("fill")
        container.add_initializer(fill, onnx_proto.TensorProto.DOUBLE, [len(statistics)], statistics.tolist())
        missing = scope.get_unique_variable_name("missing")
        container.add_node("IsNaN", [features], [missing], name=scope.get_unique_operator_name("IsNaN"))
        container.add_node("Where", [missing, fill, features], [operator.outputs[0].full_name],
                           name=scope.get_unique_operator_name("Where"))
    return convert


def _raw_scores(native: Any) -> Callable:
    def convert(scope: Any, operator: Any, container: Any) -> None:
        classifier = operator.raw_operator
        if _double(operator) and type(classifier).__name__ in RAW_SCORE_CLASSIFIERS:
            container.add_options(id(classifier), {"raw_scores": True})
            if len(classifier.classes_) == 2:  # declared as decision_function's one column; written as two, [-s, s]
                scores = operator.outputs[1]
                scores.type = type(scores.type)([scores.type.shape[0], 2])
        return native(scope, operator, container)
    return convert


def _polynomial(native: Any) -> Callable:
    def convert(scope: Any, operator: Any, container: Any) -> None:
        from onnx import TensorProto, helper

        written = len(container.nodes)
        native(scope, operator, container)
        if not _double(operator):
            return
        for node in container.nodes[written:]:
            if node.op_type == "ConstantOfShape":
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("value", helper.make_tensor("ONE", TensorProto.DOUBLE,
                                                                                       [1], [1.0])))
    return convert


def _target_encoder(native: Any) -> Callable:
    def convert(scope: Any, operator: Any, container: Any) -> None:
        import numpy as np
        from onnx import TensorProto, helper
        from skl2onnx.common.data_types import DoubleTensorType

        written = len(container.nodes)
        native(scope, operator, container)
        if not any(isinstance(variable.type, DoubleTensorType) for variable in scope.input_variables):
            return
        encoder = operator.raw_operator
        maps = [node for node in container.nodes[written:] if node.op_type == "LabelEncoder"]
        fitted = [(categories, encodings) for categories, encodings in zip(encoder.categories_, encoder.encodings_)
                  if len(categories)]
        for node, (categories, encodings) in zip(maps, fitted):
            keys = [attribute for attribute in node.attribute if attribute.name.startswith("keys_")]
            del node.attribute[:]
            node.attribute.extend([*keys, helper.make_attribute("values_int64s", list(range(len(categories)))),
                                   helper.make_attribute("default_int64", len(categories))])
            index, table = node.output[0], scope.get_unique_variable_name("encodings")
            encoded = scope.get_unique_variable_name("encoded")
            for reader in container.nodes[written:]:
                reader.input[:] = [encoded if name == index else name for name in reader.input]
            values = np.append(np.asarray(encodings, dtype=np.float64), encoder.target_mean_)
            container.add_initializer(table, TensorProto.DOUBLE, [len(values)], values.tolist())
            container.add_node("Gather", [table, index], [encoded], axis=0,
                               name=scope.get_unique_operator_name("Gather"))
        for node in container.nodes[written:]:
            if node.op_type == "Cast":
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("to", TensorProto.DOUBLE))
        operator.outputs[0].type = DoubleTensorType(operator.outputs[0].type.shape)
    return convert
