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
logged input example. Likewise the constants other comparisons hold (bin edges, a binarizer's threshold) and the
categories an encoder was fit on (factory/onnx_columns.py traces them to request columns, through concatenations;
a tree behind a scaler compares scaled values and is not probed). Last, rows holding one extreme value each
(`extremes`): where the registry model raises on them, the compiled form must refuse too (factory/guard.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from factory import onnx_columns

MAX_ROWS = 1024  # ~1,000 rows answer in milliseconds on both sides, and stay small in golden.json
EXAMPLE_ROWS = 64
_DOUBLES = (1e308, -1e308, 3.5e38, -3.5e38, 5e-324, -0.0)
EXTREMES = {**dict.fromkeys(("double", "float", "float64", "float32"), _DOUBLES),
            **dict.fromkeys(("long", "int64"), (2**63 - 1, -(2**63), 2**53 + 1)),
            **dict.fromkeys(("integer", "int32"), (2**31 - 1, -(2**31)))}
AROUND_ROWS = 1024  # measured: a float32 rounding beyond 1e-06 on 1 to 30 of 2,000 ordinary rows
FLOAT_TYPES = {"double", "float", "float64", "float32"}
INTEGER_TYPES = {"long", "integer", "int64", "int32"}
# A typical value per column type, for a base row no golden row or example fills (complete_rows).
PLAIN = {**dict.fromkeys(FLOAT_TYPES, 1.0), **dict.fromkeys(INTEGER_TYPES, 1), "boolean": False, "string": "a"}


def values(onnx_bytes: bytes, feeds: list, signature: dict) -> dict[int, list]:
    """Probe values per signature column index: beside the split thresholds of the trees reading it (typed as the
    column holds them), and the categories the encoders reading a string column know."""
    columns = onnx_columns.request_columns(signature)
    found = {index: _typed(columns[index][1], [value for threshold in splits for value in near(threshold)])
             for index, splits in onnx_columns.thresholds(onnx_bytes, feeds, signature).items()}
    for index, known in onnx_columns.categories(onnx_bytes, feeds, signature).items():
        found[index] = sorted(set(found.get(index, [])) | set(known))
    return {index: probed for index, probed in sorted(found.items()) if probed}


def described(onnx_bytes: bytes, feeds: list, signature: dict) -> str:
    """Where `rows` probes: near split thresholds (and other constants compared with), at encoders' categories."""
    kinds = [what for what, found in (
        ("near its split thresholds", onnx_columns.thresholds(onnx_bytes, feeds, signature)),
        ("at its encoders' categories", onnx_columns.categories(onnx_bytes, feeds, signature))) if found]
    return " and ".join(kinds) or "near its split thresholds"


def extremes(signature: dict, base: list[Any]) -> list[Any]:
    """Rows holding one extreme value each, in one column of the first complete `base` row: what a request may carry
    beyond any realistic input (the largest doubles, beyond float32's range, subnormal, negative zero, the widest
    integers, a missing optional value). A registry model raises on some of them; a compiled form must too."""
    columns = onnx_columns.request_columns(signature)
    complete = complete_rows(base, columns)
    if not complete:
        return []
    as_list, made = complete[0], []
    for index, (_, kind) in enumerate(columns):
        optional = not _tensor(signature) and not signature["inputs"][index].get("required", True)
        for value in EXTREMES.get(kind, ()) + ((None,) if optional else ()):
            made.append([*as_list[:index], value, *as_list[index + 1:]])
    return made if _tensor(signature) else [dict(zip((name for name, _ in columns), row)) for row in made]


def around(signature: dict, examples: list[Any], seed: int = 0) -> list[Any]:
    """AROUND_ROWS rows like the logged input example's (seeded): per row, each numeric column drawn between the
    smallest and largest value the example holds in it (half to one and a half times a lone value), rounded to as
    many decimals as its values have (prices with cents); other columns take one of the example's values. Where a
    conversion computes in float32, its rounding shows on ordinary values like these, not on golden rows.
    [] without an example."""
    columns = onnx_columns.request_columns(signature)
    table = [row for row in (_as_list(row, columns) for row in examples) if None not in row]
    if not table:
        return []
    generator = np.random.default_rng(seed)
    drawn = [_drawn(kind, [row[index] for row in table], generator) for index, (_, kind) in enumerate(columns)]
    made = [list(row) for row in zip(*drawn)]
    return made if _tensor(signature) else [dict(zip((name for name, _ in columns), row)) for row in made]


def _drawn(kind: str, seen: list, generator: Any) -> list:
    """AROUND_ROWS values of a column of `kind`, like the `seen` ones."""
    numbers = [value for value in seen if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if kind not in FLOAT_TYPES | INTEGER_TYPES or len(numbers) != len(seen):
        return [seen[at] for at in generator.integers(0, len(seen), AROUND_ROWS)]
    low, high = min(numbers), max(numbers)
    if low == high:
        low, high = sorted((low * 0.5, low * 1.5)) if low else (-1.0, 1.0)
    if kind in INTEGER_TYPES:
        return generator.integers(math.floor(low), math.floor(high) + 1, AROUND_ROWS).tolist()
    decimals = max(_decimals(value) for value in numbers)
    drawn = np.round(generator.uniform(low, high, AROUND_ROWS), decimals)
    return [float(np.float32(value)) if kind in ("float", "float32") else float(value) for value in drawn]


def _decimals(value: float) -> int:
    """How many decimals `value` is written with (3.67: 2), at most 15."""
    text = repr(float(value))
    return 15 if "e" in text else min(15, len(text.partition(".")[2].rstrip("0")))


def _tensor(signature: dict) -> bool:
    inputs = signature["inputs"]
    return bool(inputs) and inputs[0].get("type") == "tensor"


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
    columns = onnx_columns.request_columns(signature)
    probes = values(onnx_bytes, feeds, signature)
    if not probes:
        return []
    as_list = complete_rows(base, columns)
    if not as_list:  # a column no base row holds, of a type without a plain value
        return []
    made: list[list] = []
    per_column = max(1, MAX_ROWS // 2 // len(probes))
    for index, probed in probes.items():  # one feature at a time: every tree's root split sees each of them
        for value in _spread(probed, per_column):
            made.append([*as_list[0][:index], value, *as_list[0][index + 1:]])
    # All at once, each column cycling through its own shuffle of its values: deeper splits see them, and every
    # value of a column with fewer than the rows left appears at least once. Repeated rows are asked once.
    generator = np.random.default_rng(seed)
    pools = [list(generator.permutation(np.array(probes.get(index) or [row[index] for row in as_list], dtype=object)))
             for index in range(len(columns))]
    distinct = {json.dumps(row): row for row in made}
    for step in range(4 * MAX_ROWS):
        if len(distinct) >= MAX_ROWS:
            break
        row = [pool[step % len(pool)] for pool in pools]
        distinct.setdefault(json.dumps(row), row)
    tensor = feeds[0][2] is None
    kept = list(distinct.values())[:MAX_ROWS]
    return [row if tensor else dict(zip((name for name, _ in columns), row)) for row in kept]


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


def complete_rows(base: list[Any], columns: list[tuple[str, str]]) -> list[list]:
    """The `base` rows holding a value in every column, as lists. Where none does (every golden row lacks an
    optional column, as when the registry model answered only such requests; a logged example's rows are all
    complete), one row: the first with each gap filled by the first value another row holds there, else by PLAIN's
    value of its type. Without it no probe and no extreme value (a missing optional one included) would be checked
    at all. [] when a column has neither (a datetime column no row holds)."""
    rows = [_as_list(row, columns) for row in base]
    complete = [row for row in rows if None not in row]
    if complete or not rows:
        return complete
    filled = [next((row[index] for row in rows if row[index] is not None), PLAIN.get(kind))
              for index, (_, kind) in enumerate(columns)]
    return [] if None in filled else [filled]


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
