"""numpy functions inside a scikit-learn model, which skl2onnx 1.20 does not convert: a FunctionTransformer of a numpy
ufunc (`FunctionTransformer(np.log1p)` of a distance), and a TransformedTargetRegressor's inverse function (a fare
fit on its log, answered through `np.exp`). Such pipelines served natively ("FunctionTransformer is not supported
unless the transform function is None", "Unable to find a shape calculator for ... TransformedTargetRegressor").

Each ufunc is written with ONNX operators, in the input's type, to within an ulp or two of numpy's: log1p and
expm1, which `Log(1 + x)` and `Exp(x) - 1` compute with no precision left for a tiny x, as Goldberg's and Kahan's
corrections do (log(u) × (x / (u - 1)) with u = 1 + x; (u - 1) × (x / log(u)) with u = exp(x)), their infinities as
numpy's. Other functions (a lambda, kw_args, a transformer object) are refused, saying so. A TransformedTargetRegressor
checks its regressor's predictions as its FunctionTransformer does (validate=True: no NaN, no infinity), so the guard
(factory/guard.py) refuses the rows it raises on.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from factory.onnx_convert import NotConvertible

INVERSE = "FactoryTargetInverse"  # the operator applying a TransformedTargetRegressor's inverse_func


def ufunc_names() -> dict[Any, str]:
    import numpy as np

    return {np.log: "log", np.log1p: "log1p", np.exp: "exp", np.expm1: "expm1", np.sqrt: "sqrt", np.square: "square",
            np.abs: "abs"}


@functools.cache
def register() -> None:
    """The FunctionTransformer converter and shape calculator, and the inverse operator's (once per process)."""
    from skl2onnx.common._registration import (get_converter, get_shape_calculator, register_converter,
                                               register_shape_calculator)

    native, shapes = get_converter("SklearnFunctionTransformer"), get_shape_calculator("SklearnFunctionTransformer")
    register_converter("SklearnFunctionTransformer", _function_transformer(native), overwrite=True)
    register_shape_calculator("SklearnFunctionTransformer", _function_shapes(shapes), overwrite=True)
    register_converter(INVERSE, _inverse, overwrite=True)
    register_shape_calculator(INVERSE, _inverse_shapes, overwrite=True)


def parsers() -> dict:
    """skl2onnx `custom_parsers`: a TransformedTargetRegressor is its regressor, then the inverse operator."""
    from sklearn.compose import TransformedTargetRegressor

    return {TransformedTargetRegressor: _transformed_target}


def _name(function: Any, what: str) -> str:
    """The ufunc's name, or NotConvertible saying which functions convert."""
    found = ufunc_names().get(function)
    if found is None:
        shown = getattr(function, "__name__", type(function).__name__)
        raise NotConvertible(f"{what} {shown!r} has no ONNX form here (numpy's {', '.join(ufunc_names().values())} "
                             "do)")
    return found


def _function_transformer(native: Any) -> Callable:
    def convert(scope: Any, operator: Any, container: Any) -> None:
        transformer = operator.raw_operator
        if transformer.func is None:
            return native(scope, operator, container)
        name = _name(transformer.func, "a FunctionTransformer of")
        if transformer.kw_args:
            raise NotConvertible(f"a FunctionTransformer of {name} with kw_args has no ONNX form here")
        if len(operator.inputs) > 1:
            joined = scope.get_unique_variable_name("joined")
            container.add_node("Concat", [variable.full_name for variable in operator.inputs], [joined], axis=1,
                               name=scope.get_unique_operator_name("Concat"))
        else:
            joined = operator.inputs[0].full_name
        _apply(scope, container, name, joined, operator.outputs[0].full_name, operator.inputs[0].type)
    return convert


def _function_shapes(native: Callable) -> Callable:
    def calculate(operator: Any) -> None:
        if operator.raw_operator.func is None:
            return native(operator)
        _name(operator.raw_operator.func, "a FunctionTransformer of")
        widths = [variable.type.shape[1] for variable in operator.inputs]  # elementwise: the inputs side by side
        first = operator.inputs[0]
        operator.outputs[0].type = type(first.type)([first.get_first_dimension(), None if None in widths else
                                                     sum(widths)])
    return calculate


def _transformed_target(scope: Any, model: Any, inputs: list, custom_parsers: Any = None) -> list:
    from skl2onnx._parse import _parse_sklearn

    if model.transformer is not None:
        raise NotConvertible("a TransformedTargetRegressor with a transformer object has no ONNX form here (one with "
                             "func and inverse_func has)")
    if model.inverse_func is not None:
        _name(model.inverse_func, "a TransformedTargetRegressor's inverse_func")
    predicted = _parse_sklearn(scope, model.regressor_, inputs, custom_parsers=custom_parsers)
    # Named by the fitted FunctionTransformer: its checks (validate=True) are the ones the guard reads.
    operator = scope.declare_local_operator(INVERSE, model.transformer_)
    operator.inputs = predicted[:1]
    operator.outputs.append(scope.declare_local_variable("target", type(predicted[0].type)()))
    return operator.outputs


def _inverse_shapes(operator: Any) -> None:
    operator.outputs[0].type = type(operator.inputs[0].type)(operator.inputs[0].type.shape)


def _inverse(scope: Any, operator: Any, container: Any) -> None:
    source, target = operator.inputs[0].full_name, operator.outputs[0].full_name
    function = operator.raw_operator.inverse_func
    if function is None:
        container.add_node("Identity", [source], [target], name=scope.get_unique_operator_name("Identity"))
    else:
        _apply(scope, container, ufunc_names()[function], source, target, operator.inputs[0].type)


def _apply(scope: Any, container: Any, name: str, source: str, target: str, kind: Any) -> None:
    """Write `target` = numpy's `name`(`source`) (a name of ufunc_names), elementwise, in the type of `kind` (a
    skl2onnx tensor type)."""

    def node(op_type: str, inputs: list[str], output: str = "", **attributes: Any) -> str:
        output = output or scope.get_unique_variable_name(op_type.lower())
        container.add_node(op_type, inputs, [output], name=scope.get_unique_operator_name(op_type), **attributes)
        return output

    def constant(value: float) -> str:
        named = scope.get_unique_variable_name("constant")
        container.add_initializer(named, kind._get_element_onnx_type(), [], [value])
        return named

    if name in ("log", "exp", "sqrt", "abs"):
        node(name.capitalize(), [source], target)
    elif name == "square":
        node("Mul", [source, source], target)
    elif name == "log1p":  # log(u) × (x / (u - 1)), u = 1 + x; x where u rounds to 1; +inf at +inf
        u = node("Add", [source, constant(1.0)])
        shifted = node("Sub", [u, constant(1.0)])
        scaled = node("Mul", [node("Log", [u]), node("Div", [source, shifted])])
        finite = node("Where", [node("IsInf", [u], detect_negative=0), u, scaled])
        node("Where", [node("Equal", [shifted, constant(0.0)]), source, finite], target)
    else:  # expm1: (u - 1) × (x / log(u)), u = exp(x); x where u rounds to 1; -1 below; +inf at +inf
        u = node("Exp", [source])
        shifted = node("Sub", [u, constant(1.0)])
        scaled = node("Mul", [shifted, node("Div", [source, node("Log", [u])])])
        finite = node("Where", [node("IsInf", [u], detect_negative=0), u, scaled])
        low = node("Where", [node("Equal", [shifted, constant(-1.0)]), shifted, finite])
        node("Where", [node("Equal", [shifted, constant(0.0)]), source, low], target)
