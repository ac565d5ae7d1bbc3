"""Rows a compiled sklearn form must refuse because the registry model does: sklearn checks every step's input
(`check_array`: no infinity, no NaN unless the step takes missing values) and raises, where an ONNX graph computes on.
A finite request overflows there all the same: 1e308 divided by a scaler's deviation, or any value beyond float32's
range once a tree (which compares float32) or a float32 graph reads it. The guard is one more graph output (named
unlike anything in the graph), 1 for a row any checked tensor holds such a value in; the served model refuses those
rows as the registry model does (templates/bento/mf_flavors.py), and `factory build` checks both refuse the same
extreme rows (factory/compiled.py).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

GUARD = "refused_rows"


AS_FLOAT32 = "double read as float"  # a double tensor a step casts to float32 before checking it (sklearn's trees)
# Declared for a graph of ai.onnx.ml nodes only (a bare tree ensemble), which imports no default domain: the guard's
# nodes as written here (ReduceMax's axes attribute) mean the same from opset 9 through 17.
OPSET = 15


def add(onnx_model: Any, checked: list[tuple[str, str, bool]]) -> str:
    """Add the guard over `checked` (tensor name, "double", "float" or AS_FLOAT32, NaN refused too) to `onnx_model`;
    its output name, or "" for none. Comparisons only (Abs, Less, Greater, Not: in every opset skl2onnx picks; IsInf
    needs 10)."""
    import numpy as np
    from onnx import TensorProto, helper

    graph = onnx_model.graph
    guard, flags = unique_name(graph), []
    for index, (name, dtype, nan) in enumerate(checked):
        element = TensorProto.DOUBLE if dtype == "double" else TensorProto.FLOAT
        # |x| < inf fails for infinity and NaN; |x| > the largest finite value only for infinity
        bound = math.inf if nan else float(np.finfo(np.float64 if dtype == "double" else np.float32).max)
        graph.initializer.append(helper.make_tensor(f"{guard}_bound{index}", element, [], [bound]))
        nodes = []
        if dtype == AS_FLOAT32:  # rounded as numpy casts: beyond float32's range is infinity
            nodes.append(helper.make_node("Cast", [name], [f"{guard}_single{index}"], to=TensorProto.FLOAT))
            name = f"{guard}_single{index}"
        nodes.append(helper.make_node("Abs", [name], [f"{guard}_abs{index}"]))
        if nan:
            nodes += [helper.make_node("Less", [f"{guard}_abs{index}", f"{guard}_bound{index}"],
                                       [f"{guard}_ok{index}"]),
                      helper.make_node("Not", [f"{guard}_ok{index}"], [f"{guard}_bad{index}"])]
        else:
            nodes.append(helper.make_node("Greater", [f"{guard}_abs{index}", f"{guard}_bound{index}"],
                                          [f"{guard}_bad{index}"]))
        nodes += [helper.make_node("Cast", [f"{guard}_bad{index}"], [f"{guard}_f{index}"], to=TensorProto.FLOAT),
                  helper.make_node("Flatten", [f"{guard}_f{index}"], [f"{guard}_flat{index}"], axis=1),
                  helper.make_node("ReduceMax", [f"{guard}_flat{index}"], [f"{guard}_row{index}"], axes=[1],
                                   keepdims=0)]
        graph.node.extend(nodes)
        flags.append(f"{guard}_row{index}")
    if not flags:
        return ""
    with_default_opset(onnx_model)
    graph.node.append(helper.make_node("Max", flags, [guard]))
    graph.output.append(helper.make_tensor_value_info(guard, TensorProto.FLOAT, [None]))
    return guard


def unique_name(graph: Any, base: str = GUARD) -> str:
    """`base`, or base2, base3, …: the first that neither names anything in `graph` nor begins any of its names
    followed by "_" (the guard's own nodes are named so). A request column named "refused_rows" is a graph input of
    that name, and a second definition of it made onnxruntime refuse the whole graph."""
    taken = {*(value.name for value in (*graph.input, *graph.output, *graph.initializer)),
             *(name for node in graph.node for name in (*node.input, *node.output))}
    names = (base + suffix for suffix in itertools.chain([""], map(str, itertools.count(2))))
    return next(name for name in names if not any(used == name or used.startswith(name + "_") for used in taken))


def with_default_opset(onnx_model: Any) -> None:
    """Declare the default ONNX domain (at OPSET) in a graph that imports none, before nodes of it are added: a graph
    of bare trees or a ZipMap imports only ai.onnx.ml."""
    from onnx import helper

    if not any(opset.domain in ("", "ai.onnx") for opset in onnx_model.opset_import):
        onnx_model.opset_import.append(helper.make_opsetid("", OPSET))
