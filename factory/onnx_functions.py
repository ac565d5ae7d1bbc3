"""numpy functions inside a scikit-learn model, which skl2onnx 1.20 does not convert: a FunctionTransformer of a numpy
ufunc (`FunctionTransformer(np.log1p)` of a distance), a TransformedTargetRegressor's inverse function (a fare fit
on its log, answered through `np.exp`), and a Yeo-Johnson PowerTransformer (skl2onnx's writes float32 masks beside
double values, which it refuses to type). Such pipelines served natively ("FunctionTransformer is not supported
unless the transform function is None", "Unable to find a shape calculator for ... TransformedTargetRegressor",
"Conflicted constraint 'T'").

Each ufunc is written with ONNX operators, in the input's type, to within an ulp or two of numpy's: log1p and
expm1, which `Log(1 + x)` and `Exp(x) - 1` compute with no precision left for a tiny x, as Goldberg's and Kahan's
corrections do (log(u) × (x / (u - 1)) with u = 1 + x; (u - 1) × (x / log(u)) with u = exp(x)), their infinities as
numpy's. Other functions (a lambda, kw_args, a transformer object, Box-Cox) are refused, saying so, and so is a tree
reading a value computed through Log or Exp, which can land an ulp to the other side of a split threshold. A
TransformedTargetRegressor checks its regressor's predictions as its FunctionTransformer does (validate=True: no
NaN, no infinity), and a PowerTransformer's scaler its input (no infinity), so the guard (factory/guard.py) refuses
the rows they raise on.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from factory.onnx_convert import NotConvertible

INVERSE = "FactoryTargetInverse"  # the operator applying a TransformedTargetRegressor's inverse_func
YEO_JOHNSON = "FactoryYeoJohnson"  # a PowerTransformer's transform, before its StandardScaler


def ufunc_names() -> dict[Any, str]:
    import numpy as np

    return {np.log: "log", np.log1p: "log1p", np.exp: "exp", np.expm1: "expm1", np.sqrt: "sqrt", np.square: "square",
            np.abs: "abs"}


@functools.cache
def register() -> None:
    """The FunctionTransformer converter and shape calculator, and the inverse and Yeo-Johnson operators' (once per
    process: skl2onnx's registry is global)."""
    from skl2onnx.common._registration import (get_converter, get_shape_calculator, register_converter,
                                               register_shape_calculator)

    native, shapes = get_converter("SklearnFunctionTransformer"), get_shape_calculator("SklearnFunctionTransformer")
    register_converter("SklearnFunctionTransformer", _function_transformer(native), overwrite=True)
    register_shape_calculator("SklearnFunctionTransformer", _function_shapes(shapes), overwrite=True)
    for alias, converter in ((INVERSE, _inverse), (YEO_JOHNSON, _yeo_johnson)):
        register_converter(alias, converter, overwrite=True)
        register_shape_calculator(alias, _elementwise_shapes, overwrite=True)


def parsers() -> dict:
    """skl2onnx `custom_parsers`: a TransformedTargetRegressor is its regressor, then the inverse operator; a
    PowerTransformer its transform, then its scaler."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.preprocessing import PowerTransformer

    return {TransformedTargetRegressor: _transformed_target, PowerTransformer: _power_transformer}


def refuse_trees_after_logarithms(onnx_model: Any) -> None:
    """NotConvertible where a tree reads a value computed through Log or Exp: onnxruntime's are within an ulp or two
    of numpy's, not equal to the bit, so a value at a split threshold (a training value, as scikit-learn's trees and
    HistGradientBoosting's bins place them) could take the other branch, as a HistGradientBoosting regressor after a
    PowerTransformer did (0.078 relative off on an ordinary row). The probes trace thresholds to request columns
    only through casts and column picks, so they cannot look there."""
    graph = onnx_model.graph
    producers = {output: node for node in graph.node for output in node.output}
    trees = [node for node in graph.node if node.op_type.startswith("TreeEnsemble")]
    stack, seen = [name for node in trees for name in node.input], set()
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.op_type in ("Log", "Exp"):
            raise NotConvertible("a tree splits on a value computed through a logarithm or exponential (np.log1p, "
                                 "a PowerTransformer, ...), which onnxruntime computes within an ulp or two of numpy, "
                                 "not to the bit: a value at a split threshold could take the other branch")
        stack.extend(node.input)


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
        writer = _Writer(scope, container, operator.inputs[0].type)
        writer.ufunc(name, writer.joined([variable.full_name for variable in operator.inputs]),
                     operator.outputs[0].full_name)
    return convert


def _function_shapes(native: Callable) -> Callable:
    def calculate(operator: Any) -> None:
        if operator.raw_operator.func is None:
            return native(operator)
        _name(operator.raw_operator.func, "a FunctionTransformer of")
        _elementwise_shapes(operator)
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


def _elementwise_shapes(operator: Any) -> None:
    """One output of the inputs' type, their columns side by side."""
    widths = [variable.type.shape[1] for variable in operator.inputs]
    first = operator.inputs[0]
    operator.outputs[0].type = type(first.type)([first.get_first_dimension(), None if None in widths else sum(widths)])


def _inverse(scope: Any, operator: Any, container: Any) -> None:
    source, target = operator.inputs[0].full_name, operator.outputs[0].full_name
    function = operator.raw_operator.inverse_func
    writer = _Writer(scope, container, operator.inputs[0].type)
    if function is None:
        writer.node("Identity", [source], target)
    else:
        writer.ufunc(ufunc_names()[function], source, target)


def _power_transformer(scope: Any, model: Any, inputs: list, custom_parsers: Any = None) -> list:
    """The Yeo-Johnson transform, then (standardize) the PowerTransformer's own StandardScaler as skl2onnx converts
    it: two operators, so the guard checks the scaler's input as sklearn does (a transform overflowing to infinity
    raises there)."""
    if model.method != "yeo-johnson":
        raise NotConvertible(f"a PowerTransformer of method {model.method!r} has no ONNX form here (yeo-johnson has)")
    transform = scope.declare_local_operator(YEO_JOHNSON, model)
    transform.inputs = list(inputs)
    transform.outputs.append(scope.declare_local_variable("yeo_johnson", type(inputs[0].type)()))
    if not model.standardize:
        return transform.outputs
    scaler = scope.declare_local_operator("SklearnScaler", model._scaler)
    scaler.inputs = transform.outputs
    scaler.outputs.append(scope.declare_local_variable("standardized", type(inputs[0].type)()))
    return scaler.outputs


def _yeo_johnson(scope: Any, operator: Any, container: Any) -> None:
    """scipy's yeojohnson per column, as it computes it: expm1(λ log1p(x)) / λ where x >= 0 (log1p(x) where λ is 0),
    -expm1((2 - λ) log1p(-x)) / (2 - λ) below (-log1p(-x) where λ is 2); NaN stays NaN."""
    import numpy as np

    lambdas = np.asarray(operator.raw_operator.lambdas_, dtype=np.float64)
    eps = np.finfo(np.float64).eps
    writer = _Writer(scope, container, operator.inputs[0].type)
    x = writer.joined([variable.full_name for variable in operator.inputs])
    branches = []
    # Per branch: its sign, its power, and the columns where it is a bare log1p (as scipy tests λ against eps).
    for sign, power, plain in ((1.0, lambdas, np.abs(lambdas) < eps), (-1.0, 2 - lambdas, np.abs(lambdas - 2) <= eps)):
        logged = writer.ufunc("log1p", x if sign > 0 else writer.node("Neg", [x]))
        raised = writer.ufunc("expm1", writer.node("Mul", [writer.constant(power), logged]))
        divided = writer.node("Div", [raised, writer.constant(np.where(plain, 1.0, power))])
        branches.append(writer.node("Mul", [writer.constant([sign]), writer.node(
            "Where", [writer.constant(plain), logged, divided])]))
    positive = writer.node("GreaterOrEqual", [x, writer.constant([0.0])])
    writer.node("Where", [positive, *branches], operator.outputs[0].full_name)


class _Writer:
    """Nodes and constants added to a converter's container, in the element type of a skl2onnx tensor type."""

    def __init__(self, scope: Any, container: Any, kind: Any) -> None:
        self.scope, self.container, self.element = scope, container, kind._get_element_onnx_type()

    def node(self, op_type: str, inputs: list[str], output: str = "", **attributes: Any) -> str:
        output = output or self.scope.get_unique_variable_name(op_type.lower())
        self.container.add_node(op_type, inputs, [output], name=self.scope.get_unique_operator_name(op_type),
                                **attributes)
        return output

    def constant(self, values: Any) -> str:
        """A constant of the element type (booleans as booleans): a scalar, or a row broadcast over the columns."""
        import numpy as np
        from onnx import TensorProto

        array = np.asarray(values)
        element = TensorProto.BOOL if array.dtype == np.bool_ else self.element
        named = self.scope.get_unique_variable_name("constant")
        self.container.add_initializer(named, element, list(array.shape), array.ravel().tolist())
        return named

    def joined(self, names: list[str]) -> str:
        return names[0] if len(names) == 1 else self.node("Concat", names, axis=1)

    def ufunc(self, name: str, source: str, target: str = "") -> str:
        """numpy's `name`(`source`) (a name of ufunc_names), elementwise."""
        if name in ("log", "exp", "sqrt", "abs"):
            return self.node(name.capitalize(), [source], target)
        if name == "square":
            return self.node("Mul", [source, source], target)
        one, zero = self.constant(1.0), self.constant(0.0)
        if name == "log1p":  # log(u) × (x / (u - 1)), u = 1 + x; x where u rounds to 1; +inf at +inf
            u = self.node("Add", [source, one])
            shifted = self.node("Sub", [u, one])
            scaled = self.node("Mul", [self.node("Log", [u]), self.node("Div", [source, shifted])])
            finite = self.node("Where", [self.node("IsInf", [u], detect_negative=0), u, scaled])
            return self.node("Where", [self.node("Equal", [shifted, zero]), source, finite], target)
        # expm1: (u - 1) × (x / log(u)), u = exp(x); x where u rounds to 1; -1 below; +inf at +inf
        u = self.node("Exp", [source])
        shifted = self.node("Sub", [u, one])
        scaled = self.node("Mul", [shifted, self.node("Div", [source, self.node("Log", [u])])])
        finite = self.node("Where", [self.node("IsInf", [u], detect_negative=0), u, scaled])
        low = self.node("Where", [self.node("Equal", [shifted, self.constant(-1.0)]), shifted, finite])
        return self.node("Where", [self.node("Equal", [shifted, zero]), source, low], target)
