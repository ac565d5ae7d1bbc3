"""Request rows → the batch a model expects: a pandas DataFrame with the signature's names and dtypes,
a numpy array in signature order, a tensor of the declared dtype, or a compiled model's ONNX feeds.

Shared by the served Bento and by `factory build`, which records golden predictions with
`mlflow.pyfunc` on exactly the frame built here. Copied verbatim into each model's folder.
Rows are dicts keyed by the MLflow column names; an optional column may be absent or None. Also: how a model's
predictions become one JSON value per row, and how outputs with NaN/infinity are found and nulled,
alike in both places.
"""

from __future__ import annotations

import base64
import math
from typing import Any

FRAME_DTYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32", "boolean": "bool"}
NUMERIC = {"double", "float", "long", "integer", "boolean"}
INTEGERS = ("long", "integer")
NESTED = ("array", "object", "map")


def is_tensor(inputs: list[dict]) -> bool:
    return bool(inputs) and inputs[0].get("type") == "tensor"


def column_names(inputs: list[dict]) -> list[str]:
    return [spec.get("name", f"c{index}") for index, spec in enumerate(inputs)]


def tensor(rows: list[Any], inputs: list[dict]) -> Any:
    import numpy as np

    return np.asarray(rows, dtype=inputs[0]["tensor-spec"]["dtype"])


def frame(rows: list[dict], inputs: list[dict]) -> Any:
    """Columns in signature order with the signature's dtypes; a missing optional value is NaN/None.

    An optional integer column no row has a value for is left out, as `mlflow models serve` leaves
    out a column no record names: MLflow's schema enforcement refuses any missing value in an integer
    column but accepts the column's absence. Built column by column: numeric columns as numpy arrays
    of their dtype, the others inferred by pandas. Building from rows and casting afterwards took ~4x
    as long, on every batch."""
    import numpy as np
    import pandas as pd

    columns: dict[Any, Any] = {}
    for index, (name, spec) in enumerate(zip(column_names(inputs), inputs)):
        kind = spec["type"]
        # An unnamed column is labelled by position, as MLflow labels it: a type-hinted list[pydantic model]
        # takes the objects of a column labelled 0 as its list.
        label = name if spec.get("name") else index
        if kind in INTEGERS and not spec.get("required", True) and all(row.get(name) is None for row in rows):
            continue
        if kind in NESTED:
            columns[label] = [_nested(row.get(name), spec) for row in rows]
            continue
        values = [_cell(row.get(name), kind) for row in rows]
        # An integer column with a missing value stays float/object, as MLflow's own schema enforcement keeps it.
        if kind in ("double", "float") or (kind in FRAME_DTYPES and all(row.get(name) is not None for row in rows)):
            columns[label] = np.array(values, dtype=FRAME_DTYPES[kind])
        elif kind == "datetime":
            columns[label] = _datetimes(values)
        else:
            columns[label] = values
    return pd.DataFrame(columns, columns=list(columns), index=pd.RangeIndex(len(rows)))


def _nested(value: Any, spec: dict) -> Any:
    """An array, object or map cell as MLflow's schema enforcement takes it (mlflow.models.utils._enforce_type):
    lists and dicts, binary leaves as bytes, datetime leaves as naive UTC datetime64, numbers of their dtype."""
    if value is None:
        return None
    kind = spec["type"]
    if kind == "array":
        return [_nested(item, spec["items"]) for item in value]
    if kind == "map":
        return {key: _nested(item, spec["values"]) for key, item in value.items()}
    if kind == "object":
        return {key: _nested(item, spec["properties"][key]) for key, item in value.items()}
    if kind == "datetime":
        import pandas as pd

        moment = pd.Timestamp(value)  # numpy's datetime64: MLflow takes no Timestamp as an object's property
        return (moment.tz_convert("UTC").tz_localize(None) if moment.tzinfo is not None else moment).to_datetime64()
    if kind in FRAME_DTYPES and kind != "boolean":
        # MLflow checks a nested number's numpy dtype without upcasting: 3 for a double is refused, and
        # 1.5 for a float (float64) too. JSON integers are accepted for floats here as everywhere.
        import numpy as np

        return np.dtype(FRAME_DTYPES[kind]).type(value)
    return _cell(value, kind)


def _datetimes(values: list[Any]) -> Any:
    """MLflow's datetime type is numpy datetime64 without a zone, and its schema check refuses an object
    column (or a mix of aware and naive values): aware values become UTC, naive ones are taken as UTC,
    a missing one is NaT. ISO strings (requests as sent, at build time) and datetimes (as validated) alike."""
    import pandas as pd

    return pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601").dt.tz_localize(None)


def array(rows: list[dict], inputs: list[dict]) -> Any:
    """Signature order; float64 when every column is numeric (missing → NaN), else an object array."""
    import numpy as np

    names = column_names(inputs)
    numeric = all(spec["type"] in NUMERIC for spec in inputs)
    cells = [[_cell(row.get(name), spec["type"]) for name, spec in zip(names, inputs)] for row in rows]
    return np.array(cells, dtype=np.float64 if numeric else object)


def feeds(rows: list[dict], inputs: list[dict], layout: tuple) -> dict:
    """One array per ONNX input: `layout` holds (input name, numpy dtype, [signature columns]), as
    `factory build` converted the model: number columns (booleans as 0/1) under the model's float dtype, a
    missing one NaN, string columns as objects."""
    import numpy as np

    if is_tensor(inputs):
        ((name, dtype, _),) = layout
        return {name: np.asarray(rows, dtype=dtype)}
    return {name: _feed(np, rows, columns, dtype) for name, dtype, columns in layout}


def _feed(np: Any, rows: list[dict], columns: list[str], dtype: str) -> Any:
    """A (rows, columns) array filled a column at a time from plain lists: numpy reads None as NaN under a float
    dtype and a boolean as 0/1, as the model takes them. A function call per cell and a list per row took 4x as
    long (61 against 15 µs for a full batch of trafficaware's 32 rows of 6 columns: BENCHMARKS.md). A "str" feed
    (factory/tensor_columns.py) is numpy's unicode, as wide as its longest value."""
    if dtype == "str":
        return np.array([[row.get(column) for column in columns] for row in rows], dtype=str).reshape(len(rows), -1)
    matrix = np.empty((len(rows), len(columns)), dtype=dtype)
    for index, column in enumerate(columns):
        matrix[:, index] = [row.get(column) for row in rows]
    return matrix


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return math.nan if kind in ("double", "float", "long", "integer") else None
    if kind == "binary":
        return base64.b64decode(value)
    return value


def as_outputs(predictions: Any) -> list:
    """One JSON value per row: a DataFrame's rows as `{column: value}` records (its column names are the
    outputs' names), likewise a dict of named arrays (what an ONNX or other tensor model answers; `mlflow
    models serve` sends those column-wise, one row per answer keeps batches splittable), anything else
    (array, Series, list) row by row."""
    if hasattr(predictions, "columns") and hasattr(predictions, "to_dict"):  # a DataFrame, without importing pandas
        return _iso_datetimes(predictions).to_dict(orient="records")
    if isinstance(predictions, dict):
        columns = {name: _listed(values) for name, values in sorted(predictions.items())}
        return [dict(zip(columns, row)) for row in zip(*columns.values())]
    return _listed(predictions)


def _listed(values: Any) -> list:
    import numpy as np

    array = np.asarray(values)
    # Datetimes answer ISO 8601 strings, as `mlflow models serve`'s encoder writes them (tolist() gives ints).
    return np.datetime_as_string(array).tolist() if array.dtype.kind == "M" else array.tolist()


def _iso_datetimes(frame: Any) -> Any:
    """A frame's datetime columns (a Prophet forecast's `ds`) as ISO 8601 strings, a missing time as null."""
    stamps = [name for name, dtype in frame.dtypes.items() if getattr(dtype, "kind", "") == "M"]
    if not stamps:
        return frame
    frame = frame.copy()
    for name in stamps:
        column = frame[name]
        values = [None if missing else stamp.isoformat() for stamp, missing in zip(column, column.isna())]
        frame[name] = type(column)(values, index=column.index, dtype=object)  # not pandas' string dtype: None stays
    return frame


def known_finite(predictions: Any) -> bool:
    """Whether a model's predictions are a numeric array without NaN or infinity, checked in one numpy call: row by
    row (all_finite) took 8 µs of trafficaware's 50 µs full batch. False for anything else, then checked row by row."""
    import numpy as np

    return (isinstance(predictions, np.ndarray) and predictions.dtype.kind in "biuf"
            and bool(np.isfinite(predictions).all()))


def all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(map(all_finite, value))
    if isinstance(value, dict):
        return all(map(all_finite, value.values()))
    return True


def nulled(value: Any) -> Any:
    """NaN and infinities as None (JSON has neither), at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: nulled(item) for key, item in value.items()}
    return [nulled(item) for item in value] if isinstance(value, list) else value
