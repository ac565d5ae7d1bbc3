"""Rows a compiled form must also reproduce besides the golden ones: where conversions go silently wrong.

Golden rows are drawn from the signature across ±1e12 and almost never land near a tree's split
thresholds, yet that is where a converted tree ensemble disagrees: its thresholds are float32 (or
converted between float32 and float64), so an input between the registry model's threshold and the
compiled one takes the other branch. Real inputs land there all the time: an XGBoost model fit on
prices with cents splits at float32(3.67), and a request holding the double 3.67 sits just below it
(measured: a float64 ONNX form of an XGBRegressor answered 831 of 2,000 realistic rows differently while
agreeing on every golden row). So the check also asks, per feature a tree splits on, the threshold
itself, its float32 and float64 neighbours and the shortest decimal that rounds to it, combined into rows
(one feature at a time on a base row, then all features at once, seeded), plus the rows of the model's own
logged input example. A threshold maps to a request column only where the tree reads a graph input
directly (one matrix in signature order, or a tensor); trees behind a scaler or encoder are not probed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

MAX_ROWS = 1024  # ~1,000 rows answer in milliseconds on both sides, and stay small in golden.json
EXAMPLE_ROWS = 64
TREE_OPS = {"TreeEnsembleRegressor", "TreeEnsembleClassifier"}
PASS_THROUGH = {"Cast", "Identity"}
FLOAT_TYPES = {"double", "float", "float64", "float32"}
INTEGER_TYPES = {"long", "integer", "int64", "int32"}


def thresholds(onnx_bytes: bytes, feeds: list) -> dict[int, list[float]]:
    """Split thresholds per request column index, read from the candidate's tree operators."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(onnx_bytes).graph
    if len(feeds) != 1:  # one input per column: trees read a concatenation, not a column
        return {}
    producers = {output: node for node in graph.node for output in node.output}
    found: dict[int, set[float]] = {}
    for node in graph.node:
        if node.op_type not in TREE_OPS or _source(node.input[0], producers) != feeds[0][0]:
            continue
        attributes = {attribute.name: attribute for attribute in node.attribute}
        if "nodes_values_as_tensor" in attributes:
            values = numpy_helper.to_array(attributes["nodes_values_as_tensor"].t).tolist()
        else:
            values = list(attributes["nodes_values"].floats)
        modes = [mode.decode() for mode in attributes["nodes_modes"].strings]
        for feature, value, mode in zip(attributes["nodes_featureids"].ints, values, modes):
            if mode != "LEAF" and math.isfinite(value):
                found.setdefault(feature, set()).add(float(value))
    return {feature: sorted(values) for feature, values in sorted(found.items())}


def _source(name: str, producers: dict) -> str:
    """The graph input `name` is read from through casts, or `name` itself where something computes it."""
    while name in producers and producers[name].op_type in PASS_THROUGH:
        name = producers[name].input[0]
    return name


def near(threshold: float) -> list[float]:
    """Inputs on either side of `threshold` as float64 and float32 compare them, and the decimal a client sends."""
    single = np.float32(threshold)
    values = {threshold, math.nextafter(threshold, -math.inf), math.nextafter(threshold, math.inf), float(single),
              float(np.nextafter(single, np.float32(-np.inf))), float(np.nextafter(single, np.float32(np.inf))),
              float(str(single))}
    return sorted(value for value in values if math.isfinite(value))


def rows(onnx_bytes: bytes, feeds: list, signature: dict, base: list[Any], seed: int = 0) -> list[Any]:
    """At most MAX_ROWS request rows (dicts keyed by column, or lists for a tensor) probing the candidate's
    thresholds; `base` (example rows, then golden rows) supplies the other columns' values."""
    if not base:
        return []
    columns = _columns(signature, feeds)
    probes = {index: _typed(columns[index][1], [value for threshold in found for value in near(threshold)])
              for index, found in thresholds(onnx_bytes, feeds).items() if index < len(columns)}
    probes = {index: values for index, values in probes.items() if values}
    if not probes:
        return []
    as_list = [row for row in (_as_list(row, columns) for row in base) if None not in row]
    if not as_list:  # an optional column no base row holds: nothing to fill it with
        return []
    made: list[list] = []
    per_column = max(1, MAX_ROWS // 2 // len(probes))
    for index, values in probes.items():  # one feature at a time: every tree's root split sees each of them
        for value in _spread(values, per_column):
            made.append([*as_list[0][:index], value, *as_list[0][index + 1:]])
    # All at once, each column cycling through its own shuffle of its values: deeper splits see them, and every
    # value of a column with fewer than the rows left appears at least once.
    generator = np.random.default_rng(seed)
    pools = [list(generator.permutation(np.array(probes.get(index) or [row[index] for row in as_list], dtype=object)))
             for index in range(len(columns))]
    made += [[pool[step % len(pool)] for pool in pools] for step in range(MAX_ROWS - len(made))]
    tensor = feeds[0][2] is None
    return [row if tensor else dict(zip((name for name, _ in columns), row)) for row in made[:MAX_ROWS]]


def _columns(signature: dict, feeds: list) -> list[tuple[str, str]]:
    """(name, type) per matrix column: the signature's columns, or a tensor's features under its dtype."""
    inputs = signature["inputs"]
    if feeds[0][2] is None:
        spec = inputs[0]["tensor-spec"]
        return [(str(index), spec["dtype"]) for index in range(spec["shape"][1])]
    kinds = {spec.get("name", f"c{index}"): spec["type"] for index, spec in enumerate(inputs)}
    return [(name, kinds[name]) for name in feeds[0][2]]


def _typed(kind: str, values: list[float]) -> list:
    """The probe values a column of `kind` can hold: integers on both sides of a threshold for integer
    columns, float32 values for float32 ones; none for booleans (both are in any base set soon enough)."""
    if kind in INTEGER_TYPES:
        return sorted({int(edge) for value in values for edge in (math.floor(value), math.ceil(value))
                       if abs(value) < 2**53})
    if kind in ("float", "float32"):
        return sorted({float(np.float32(value)) for value in values if abs(value) < 3e38})
    return sorted(set(values)) if kind in FLOAT_TYPES else []


def _spread(values: list, count: int) -> list:
    """`count` values spread evenly over the sorted `values` (all of them when fewer)."""
    if len(values) <= count:
        return values
    return [values[round(step * (len(values) - 1) / (count - 1))] for step in range(count)] if count > 1 else values[:1]


def _as_list(row: Any, columns: list[tuple[str, str]]) -> list:
    return list(row) if isinstance(row, list) else [row.get(name) for name, _ in columns]


def example_rows(model_dir: Path, signature: dict) -> list[Any]:
    """The rows of the input example logged with the model (realistic values, chosen by its author), as
    requests carry them; [] when there is none, or it does not fit the signature as plain finite values."""
    try:
        import mlflow.models

        example = mlflow.models.Model.load(str(model_dir)).load_input_example(str(model_dir))
    except Exception:  # no example, or one MLflow cannot read back: the check goes on without it
        return []
    inputs = signature["inputs"]
    if inputs and inputs[0].get("type") == "tensor":
        array = np.asarray(example) if example is not None else np.empty((0,))
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            return []
        return array[:EXAMPLE_ROWS].tolist()
    names = [spec.get("name") for spec in inputs]
    if example is None or not hasattr(example, "to_dict") or not all(name in example.columns for name in names):
        return []
    found = []
    for record in example[names].head(EXAMPLE_ROWS).to_dict("records"):
        row = {name: _plain(value) for name, value in record.items()}
        if all(value is not None for value in row.values()):
            found.append(row)
    return found


def _plain(value: Any) -> Any:
    """A JSON value as a request holds it, or None for what a request cannot (NaN, a missing value)."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (bool, int, float, str)) else None
