"""A model taking several one-column tensors, served as rows of columns.

A table of mixed types reaches ONNX as one input per column: skl2onnx takes a string column beside number columns
only so, each input [None, 1]. MLflow then gets such a model logged one of three ways, and serves none of them from a
row of columns:
- with the signature of the DataFrame it was fit on (`infer_signature(frame, y)`, how a table model is usually
  logged): MLflow's pyfunc feeds each input the column's 1-D values, which a [None, 1] input refuses, so the model
  raises on every request ("Input must be a list of dictionaries or a single numpy array for input 'city'");
- with a signature of those tensors (`infer_signature({"city": x[:, :1], ...}, y)`): the pyfunc takes a dict of
  [rows, 1] arrays, and `mlflow models serve` a request of `{"inputs": {"city": [["paris"], ...], ...}}`;
- with none (mlflow.onnx infers none): the graph's inputs are all there is.
A text model's graph taking one string column ([None, 1]) is the same case of one: the factory refused it unsigned
or with a signature of that tensor (a tensor of strings), and its pyfunc takes that dict too.
Each is served here as rows of columns, one column per tensor, of its type (string for a STRING tensor, float for a
FLOAT one), and the model is fed a dict of the [rows, 1] arrays its tensors are (templates/bento/mf_inputs.feeds, by
the layout the flavor keeps as `feeds`), through MLflow's pyfunc as through the compiled graph. For the first way the
build states those tensors as the imported copy's signature (factory/onnx_graph.py `fed_as_tensors`): the pyfunc then
takes the dict, as it does for the second way.
"""

from __future__ import annotations

import json
from typing import Optional

# A one-column tensor's numpy dtype (as MLflow writes a TensorSpec's) → the column's MLflow type, and the numpy dtype
# its [rows, 1] array is fed in: MLflow's schema enforcement takes Python objects for "object" and only numpy's unicode
# strings for "str" (mf_inputs sizes those to the longest value).
COLUMN_TYPES = {"float32": ("float", "float32"), "float64": ("double", "float64"), "int64": ("long", "int64"),
                "int32": ("integer", "int32"), "bool": ("boolean", "bool"), "object": ("string", "object"),
                "str": ("string", "str")}


def as_columns(signature: dict) -> Optional[tuple[dict, list]]:
    """For a signature of two or more named [-1, 1] tensors of COLUMN_TYPES, or of one string tensor: the column
    signature it is served by (outputs and params kept), and the feeds layout `[[tensor name, numpy dtype, [column]],
    ...]`. None otherwise (one number tensor is served as a tensor; other shapes and dtypes are refused where the
    signature is checked, a tensor of strings among them)."""
    specs = signature.get("inputs") or []
    if not specs or not all(_one_column(spec) for spec in specs) or (
            len(specs) == 1 and COLUMN_TYPES[specs[0]["tensor-spec"]["dtype"]][0] != "string"):
        return None
    columns, layout = [], []
    for spec in specs:
        kind, dtype = COLUMN_TYPES[spec["tensor-spec"]["dtype"]]
        columns.append({"type": kind, "name": spec["name"], "required": True})
        layout.append([spec["name"], dtype, [spec["name"]]])
    return {**signature, "inputs": columns}, layout


def tensor_inputs(layout: list) -> str:
    """The signature inputs, as MLmodel holds them (a JSON string), that have MLflow's pyfunc take the dict of the
    layout's [rows, 1] arrays."""
    return json.dumps([{"name": name, "type": "tensor", "tensor-spec": {"dtype": dtype, "shape": [-1, 1]}}
                       for name, dtype, _ in layout])


def _one_column(spec: dict) -> bool:
    tensor = spec.get("tensor-spec")
    return (spec.get("type") == "tensor" and isinstance(spec.get("name"), str) and isinstance(tensor, dict)
            and tensor.get("shape") == [-1, 1] and tensor.get("dtype") in COLUMN_TYPES)
