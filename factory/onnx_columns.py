"""Where a compiled (ONNX) graph compares a request column with a constant, and which categories it knows.

A conversion goes silently wrong where the graph compares an input with a constant: a tree's split threshold
stored as float32, a bin edge, a binarizer's threshold compared with `<` where sklearn compares with `>`. And an
encoder fit on categories answers made-up strings (what golden rows hold) all alike, so its known categories must be
asked too. This module reads both from the graph, per request column (factory/probes.py builds rows from them):
a tensor's features are traced back to request columns through casts, reshapes, column picks (Gather,
ArrayFeatureExtractor) and concatenations (a ColumnTransformer passing numeric columns through beside encoded ones).
"""

from __future__ import annotations

import math
from typing import Any

TREE_OPS = {"TreeEnsembleRegressor", "TreeEnsembleClassifier"}
COMPARISONS = {"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal"}
PASS_THROUGH = {"Cast", "Identity", "Reshape"}
PICKS = {"Gather", "ArrayFeatureExtractor"}  # with a constant index: those columns of their input
CATEGORY_ATTRIBUTES = {"cats_strings", "keys_strings"}


def request_columns(signature: dict) -> list[tuple[str, str]]:
    """(name, type) per request column: the signature's columns, or a tensor's features under its dtype."""
    inputs = signature["inputs"]
    if inputs and inputs[0].get("type") == "tensor":
        spec = inputs[0]["tensor-spec"]
        return [(str(index), spec["dtype"]) for index in range(spec["shape"][1])]
    return [(spec.get("name", f"c{index}"), spec["type"]) for index, spec in enumerate(inputs)]


def thresholds(onnx_bytes: bytes, feeds: list, signature: dict) -> dict[int, list[float]]:
    """Per request column index (request_columns), the constants the graph compares it with: the split thresholds
    of the trees reading it, and the constants of comparisons."""
    graph = _Graph(onnx_bytes, feeds, request_columns(signature))
    found: dict[int, set[float]] = {}
    for node in graph.nodes:
        if node.op_type in TREE_OPS:
            sources, _ = graph.features(node.input[0])
            for feature, value in _splits(node):
                if feature < len(sources) and sources[feature] is not None:
                    found.setdefault(sources[feature], set()).add(value)
        elif node.op_type in COMPARISONS and len(node.input) == 2:
            for tensor, constant in (node.input, reversed(node.input)):
                index = graph.column(tensor) if constant in graph.constants else None
                if index is not None:
                    found.setdefault(index, set()).update(value for value in graph.constants[constant].ravel().tolist()
                                                          if isinstance(value, float) and math.isfinite(value))
    return {index: sorted(values) for index, values in sorted(found.items()) if values}


def categories(onnx_bytes: bytes, feeds: list, signature: dict) -> dict[int, list[str]]:
    """Per string column read by an encoder (one-hot, ordinal, target encoding), the categories it was fit on."""
    columns = request_columns(signature)
    graph = _Graph(onnx_bytes, feeds, columns)
    found: dict[int, set[str]] = {}
    for node in graph.nodes:
        known = [value.decode("utf-8", "replace") for attribute in node.attribute
                 if attribute.name in CATEGORY_ATTRIBUTES for value in attribute.strings]
        index = graph.column(node.input[0]) if known and node.input else None
        if index is not None and columns[index][1] == "string":
            found.setdefault(index, set()).update(known)
    return {index: sorted(known) for index, known in sorted(found.items())}


def _splits(node: Any) -> list[tuple[int, float]]:
    """(feature, threshold) of a tree operator's branch nodes."""
    from onnx import numpy_helper

    attributes = {attribute.name: attribute for attribute in node.attribute}
    if "nodes_values_as_tensor" in attributes:
        values = numpy_helper.to_array(attributes["nodes_values_as_tensor"].t).tolist()
    else:
        values = list(attributes["nodes_values"].floats)
    modes = [mode.decode() for mode in attributes["nodes_modes"].strings]
    return [(feature, float(value)) for feature, value, mode in zip(attributes["nodes_featureids"].ints, values, modes)
            if mode != "LEAF" and math.isfinite(value)]


class _Graph:
    """Which request column each tensor's features are, as far as casts, column picks and concatenations keep it."""

    def __init__(self, onnx_bytes: bytes, feeds: list, columns: list[tuple[str, str]]):
        import onnx
        from onnx import numpy_helper

        model = onnx.load_from_string(onnx_bytes)
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # widths stay unknown where inference fails: those features are not probed
            pass
        self.nodes = list(model.graph.node)
        self.producers = {output: node for node in self.nodes for output in node.output}
        self.widths = {info.name: _width(info) for info in [*model.graph.input, *model.graph.value_info]}
        self.constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
        index = {name: position for position, (name, _) in enumerate(columns)}
        # (graph input, feature) -> request column index
        self.inputs = {(name, offset): (offset if held is None else index[held[offset]])
                       for name, _, held in feeds for offset in range(len(columns) if held is None else len(held))}

    def column(self, name: str) -> int | None:
        """The request column a one-column tensor is."""
        sources, whole = self.features(name)
        return sources[0] if whole and len(sources) == 1 else None

    def features(self, name: str) -> tuple[list, bool]:
        """Per feature of tensor `name`, the request column index it is or None, and whether that list is whole
        (a part of unknown width ends it: the features after it cannot be placed)."""
        name = self._through(name)
        width = self.widths.get(name)
        node = self.producers.get(name)
        if node is None:
            return [self.inputs.get((name, offset)) for offset in range(width or 0)], width is not None
        if node.op_type == "Concat" and _attribute(node, "axis") in (1, -1):
            found: list = []
            for part in node.input:
                features, whole = self.features(part)
                found += features
                if not whole:
                    return found, False
            return found, True
        picked = self._picked(node)
        if picked is not None:
            return picked, True
        return [None] * (width or 0), width is not None

    def _picked(self, node: Any) -> list | None:
        """The features a column pick with a constant index selects, or None where it is not one."""
        if node.op_type not in PICKS or node.input[1] not in self.constants or (
                node.op_type == "Gather" and _attribute(node, "axis") not in (1, -1)):
            return None
        sources, whole = self.features(node.input[0])
        indices = self.constants[node.input[1]].ravel().tolist()
        if not all(isinstance(at, int) and 0 <= at < len(sources) for at in indices):
            return None if not whole else [None] * len(indices)
        return [sources[at] for at in indices]

    def _through(self, name: str) -> str:
        """The tensor `name` copies: through casts, and reshapes that keep its width."""
        while name in self.producers and self.producers[name].op_type in PASS_THROUGH:
            source = self.producers[name].input[0]
            if self.producers[name].op_type == "Reshape" and (self.widths.get(name) is None
                                                              or self.widths.get(name) != self.widths.get(source)):
                break
            name = source
        return name


def _width(info: Any) -> int | None:
    dims = info.type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None


def _attribute(node: Any, name: str) -> Any:
    return next((attribute.i for attribute in node.attribute if attribute.name == name), None)
