"""Requests drawn from a model's MLflow signature: valid ones, and every kind of invalid one.

The strategies know the service's contract (factory.fuzz_values): a valid request has 1..max_batch_size rows
of the signature's types; each invalid kind breaks exactly one rule, and says which JSON field it broke
when there is one, so the check can insist that the 4xx names it. `factory.fuzz` sends them.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from hypothesis import strategies as st

from factory.errors import ServeError
from factory.fuzz_report import parses
from factory.fuzz_values import (FLOAT_BITS, INT_BOUNDS, NESTED_TYPES, check_type, field_path, valid_value,
                                 wrong_nested, wrong_value)

DEFAULT_MAX_BODY_BYTES = 1 << 20
# MLflow's ParamSpec types, less binary: MLflow takes bytes there, which JSON cannot carry.
SCALAR_PARAM_TYPES = ("boolean", "datetime", "double", "float", "integer", "long", "string")
# numpy dtype names are the ones ending in their width; MLflow's own names do not.
TENSOR_DTYPES = tuple(sorted(["bool", *(name for name in [*FLOAT_BITS, *INT_BOUNDS] if name[-1].isdigit())]))
_NON_FINITE = ("NaN", "Infinity", "-Infinity")


@dataclass(frozen=True)
class Column:
    """One model input: a named column, or the model's single tensor (whose name may be None)."""

    name: Optional[str]
    type: str  # an MLflow DataType name, or a numpy dtype name for a tensor
    required: bool = True
    shape: Optional[tuple[int, ...]] = None  # a tensor row's shape: the signature's shape minus the batch dim
    spec: Optional[dict] = None  # an array, object or map column's whole MLflow type
    # A categorical string column's categories (resolved.json, factory/categorical.py): the only values it takes.
    categories: Optional[tuple[str, ...]] = None

    @property
    def value_type(self) -> Any:
        if self.categories is not None:
            return {"type": self.type, "categories": list(self.categories)}
        return self.spec if self.spec is not None else self.type

    @property
    def is_tensor(self) -> bool:
        return self.shape is not None


def signature_columns(signature: Union[dict, list, None]) -> list[Column]:
    """Columns of `signature.to_dict()` (inputs as a JSON string or a list) or of a parsed inputs list."""
    specs = _input_specs(signature)
    if any(spec.get("type") == "tensor" for spec in specs):
        if len(specs) > 1:
            raise ServeError(f"the signature has {len(specs)} inputs including a tensor: "
                             "only a single tensor input is supported")
        return [_tensor_column(specs[0])]
    columns = [_column(index, spec) for index, spec in enumerate(specs)]
    duplicates = [name for name, count in Counter(column.name for column in columns).items() if count > 1]
    if duplicates:
        raise ServeError(f"input column {duplicates[0]!r} appears more than once")
    return columns


def signature_params(signature: Union[dict, list, None]) -> list[dict]:
    """The signature's inference params (its ParamSchema), [] when it has none."""
    params = signature.get("params") if isinstance(signature, dict) else None
    params = json.loads(params) if isinstance(params, str) else params or []
    for spec in params:
        if spec.get("type") not in SCALAR_PARAM_TYPES or spec.get("shape") not in (None, [-1]):
            raise ServeError(f"param {spec.get('name')!r} has unsupported type {spec.get('type')!r} with shape "
                             f"{spec.get('shape')!r} (supported: {', '.join(SCALAR_PARAM_TYPES)}, each alone or "
                             "as a list, shape [-1])")
    return params


def _input_specs(signature: Union[dict, list, None]) -> list[dict]:
    inputs = signature.get("inputs") if isinstance(signature, dict) else signature
    if isinstance(inputs, str):
        try:
            inputs = json.loads(inputs)
        except json.JSONDecodeError as exc:
            raise ServeError(f"the signature's inputs are not valid JSON: {exc}") from exc
    if not inputs:
        raise ServeError("the model has no input signature: log it with one (mlflow.models.infer_signature)")
    if not isinstance(inputs, list) or not all(isinstance(spec, dict) for spec in inputs):
        raise ServeError("the signature's inputs must be a list of column or tensor specs")
    return inputs


def _column(index: int, spec: dict) -> Column:
    # A type-hinted predict (model_input: list[str]) logs one unnamed column: rows key it as c0, the name
    # the served frame gives it (mf_inputs.column_names), and MLflow takes its columns by position.
    name, type_name = spec.get("name") or f"c{index}", spec.get("type")
    if not isinstance(name, str):
        raise ServeError(f"input column {index} has a name that is not a string: {name!r}")
    check_type(spec, f"input column {repr(name) if spec.get('name') else f'{index} (unnamed)'}")
    categories = spec.get("categories")
    if categories is not None and (type_name != "string" or not isinstance(categories, list) or not categories
                                   or not all(isinstance(value, str) for value in categories)):
        raise ServeError(f"input column {name!r} has categories {categories!r}: only a string column has them, "
                         "a non-empty list of strings (resolved.json is not what `factory build` writes: build again)")
    return Column(name, type_name, required=spec.get("required", True) is not False,
                  spec={key: value for key, value in spec.items() if key not in ("name", "required")}
                  if type_name in NESTED_TYPES else None,
                  categories=None if categories is None else tuple(categories))


def _tensor_column(spec: dict) -> Column:
    tensor = spec.get("tensor-spec") if isinstance(spec.get("tensor-spec"), dict) else {}
    dtype, shape = tensor.get("dtype"), tensor.get("shape")
    if dtype not in TENSOR_DTYPES:
        raise ServeError(f"the tensor input has unsupported dtype {dtype!r} (supported: {', '.join(TENSOR_DTYPES)})")
    if not (isinstance(shape, list) and shape and all(type(d) is int and (d == -1 or d > 0) for d in shape)):
        raise ServeError(f"the tensor input has invalid shape {shape!r}: need a list of dimensions, each -1 or > 0")
    return Column(spec.get("name"), dtype, shape=tuple(shape[1:]))


def valid_row(columns: list[Column]) -> st.SearchStrategy:
    return _rows(columns, 1, 1).map(lambda rows: rows[0])


def unnamed_columns(signature: Union[dict, list, None]) -> bool:
    """Whether the signature's columns have no names: its rows may then come as `mlflow models serve` takes
    them (templates/bento/mf_schema.py), the value itself for one column or a list in column order."""
    specs = _input_specs(signature)
    return bool(specs) and specs[0].get("type") != "tensor" and not any(spec.get("name") for spec in specs)


def as_clients_send(requests: st.SearchStrategy[dict], columns: list[Column]) -> st.SearchStrategy[dict]:
    """Requests of an unnamed signature with any of their rows in the positional form, so fuzzing exercises
    both (golden requests stay keyed: the golden recorder builds its frame from keyed rows)."""
    return requests.flatmap(lambda request: st.lists(st.booleans(), min_size=len(request["inputs"]),
                                                     max_size=len(request["inputs"])).map(
        lambda flags: {**request, "inputs": [_positional(row, columns) if flag else row
                                             for row, flag in zip(request["inputs"], flags)]}))


def _positional(row: dict, columns: list[Column]) -> Any:
    if not all(column.name in row for column in columns):
        return row  # an optional column left out has no place in a list
    if len(columns) > 1:
        return [row[column.name] for column in columns]
    value = row[columns[0].name]
    # An object or map value keyed like the row itself ({} too) would be read as the row: it stays keyed.
    return row if isinstance(value, dict) and set(value) <= {columns[0].name} else value


def valid_request(columns: list[Column], max_batch_size: int, params: Sequence[dict] = ()) -> st.SearchStrategy[dict]:
    """`{"inputs": rows}` with 1..max_batch_size rows, full batches included, and, when the signature has
    params, maybe `"params"` with some of them."""
    # A full batch cycles a few distinct rows: cheap to draw even when max_batch_size is large.
    full = _rows(columns, 1, 4).map(lambda few: [few[i % len(few)] for i in range(max_batch_size)])
    requests = st.one_of(_rows(columns, 1, max_batch_size), full).map(lambda rows: {"inputs": rows})
    if not params:
        return requests
    given = st.fixed_dictionaries({}, optional={spec["name"]: _param_value(spec) for spec in params})
    return st.tuples(requests, st.none() | given).map(
        lambda pair: pair[0] if pair[1] is None else {**pair[0], "params": pair[1]})


def _param_value(spec: dict) -> st.SearchStrategy:
    value = valid_value(spec["type"])
    return st.lists(value, max_size=3) if spec.get("shape") else value


def invalid_request(columns: list[Column], max_batch_size: int, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                    params: Sequence[dict] = ()) -> st.SearchStrategy[tuple[str, bytes, Optional[str]]]:
    return st.one_of(*invalid_requests_by_kind(columns, max_batch_size, max_body_bytes, params).values())


def invalid_requests_by_kind(columns: list[Column], max_batch_size: int, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                             params: Sequence[dict] = ()) -> dict[str, st.SearchStrategy[tuple[str, bytes, Optional[str]]]]:
    """Per kind, (kind, body, field) for bodies the service must refuse with a 4xx; field is what the
    error must name, or None where no single field is at fault."""
    one_row = valid_row(columns)
    bodies = {
        **{kind: _request_with_bad_row(columns, max_batch_size, corrupt)
           for kind, corrupt in _row_corruptions(columns).items()},
        "empty_inputs": st.just((encode({"inputs": []}), "inputs")),
        "too_many_rows": one_row.map(lambda row: (encode({"inputs": [row] * (max_batch_size + 1)}), "inputs")),
        "not_json": st.one_of(valid_request(columns, max_batch_size).map(lambda request: encode(request)[:-1]),
                              st.binary(max_size=32).filter(lambda body: not parses(body, json.loads)),
                              ).map(lambda body: (body, None)),
        "wrong_top_level": one_row.flatmap(lambda r: st.sampled_from([[r], {"inputs": r}, {"rows": [r]}, {}, None]))
        .map(lambda document: (encode(document), None)),
        # Trailing whitespace keeps it valid JSON: only its size is wrong.
        "oversized_body": one_row.map(lambda row: (encode({"inputs": [row]}).ljust(max_body_bytes + 1), None)),
        **_params_corruptions(one_row, params),
    }
    return {kind: strategy.map(lambda body_and_field, kind=kind: (kind, *body_and_field))
            for kind, strategy in bodies.items()}


def _params_corruptions(one_row: st.SearchStrategy, params: list[dict]) -> dict[str, st.SearchStrategy]:
    """(body, field) per kind of bad `params`: a name the signature lacks, a value of the wrong type (for a
    list param, one item), not an object at all."""
    if not params:
        return {}
    names = {spec["name"] for spec in params}

    def wrong(spec: dict) -> st.SearchStrategy[tuple[list, Any]]:
        bad = wrong_value(spec["type"])
        return bad.map(lambda value: ([spec["name"], 0], [value])) if spec.get("shape") else bad.map(
            lambda value: ([spec["name"]], value))

    def body(row: Any, given: Any) -> bytes:
        return encode({"inputs": [row], "params": given})

    unknown = st.text(min_size=1, max_size=12).filter(lambda name: name not in names)
    return {
        "unknown_param": st.tuples(one_row, unknown).map(
            lambda pair: (body(pair[0], {pair[1]: 1}), field_path(["params", pair[1]]))),
        "wrong_param_type": st.tuples(one_row, st.sampled_from(params).flatmap(wrong)).map(
            lambda pair: (body(pair[0], {pair[1][0][0]: pair[1][1]}), field_path(["params", *pair[1][0]]))),
        "params_not_object": st.tuples(one_row, st.sampled_from([[1], "fast", 1])).map(
            lambda pair: (body(*pair), "params")),
    }


def _rows(columns: list[Column], min_rows: int, max_rows: int) -> st.SearchStrategy[list]:
    first = columns[0]
    if not first.is_tensor:
        required = {c.name: valid_value(c.value_type) for c in columns if c.required}
        optional = {c.name: st.none() | valid_value(c.value_type) for c in columns if not c.required}
        return st.lists(st.fixed_dictionaries(required, optional=optional), min_size=min_rows, max_size=max_rows)
    # Each -1 dim gets one length per request, so the rows stack into one rectangular tensor.
    dims = st.tuples(*(st.integers(1, 4) if d == -1 else st.just(d) for d in first.shape))
    return dims.flatmap(lambda concrete: st.lists(_tensor(concrete, first.type), min_size=min_rows, max_size=max_rows))


def _tensor(dims: tuple[int, ...], dtype: str) -> st.SearchStrategy:
    # Drawing each element of a large tensor is slow (a 28x28 image is 784 draws): cycle a few instead.
    return st.lists(valid_value(dtype), min_size=1, max_size=min(math.prod(dims), 8)).map(
        lambda leaves: _shaped(dims, itertools.cycle(leaves)))


def _shaped(dims: tuple[int, ...], leaves: Iterator) -> Any:
    return [_shaped(dims[1:], leaves) for _ in range(dims[0])] if dims else next(leaves)


# A corruption turns one valid row into a strategy of (the field at fault, the corrupted row).
Corruption = Callable[[Any], st.SearchStrategy[tuple[str, Any]]]


@st.composite
def _request_with_bad_row(draw: Callable, columns: list[Column], max_batch_size: int,
                          corrupt: Corruption) -> tuple[bytes, str]:
    rows = draw(_rows(columns, 1, max_batch_size))
    index = draw(st.integers(0, len(rows) - 1))
    field, rows[index] = draw(corrupt(rows[index]))
    return encode({"inputs": rows}), field


def _row_corruptions(columns: list[Column]) -> dict[str, Corruption]:
    if columns[0].is_tensor:
        return _tensor_corruptions(columns[0])
    required = [c for c in columns if c.required]
    floats = [c for c in columns if c.type in FLOAT_BITS]
    names = {c.name for c in columns}

    def setting(row: dict, column: Column, value: Any) -> tuple[str, dict]:
        return column.name, {**row, column.name: value}

    nested = [c for c in columns if c.spec is not None]
    categorical = [c for c in columns if c.categories is not None]
    corruptions: dict[str, Corruption] = {
        "wrong_type": lambda row: st.sampled_from(columns).flatmap(
            lambda c: wrong_value(c.value_type).map(lambda value: setting(row, c, value))),
        "extra_field": lambda row: st.text(min_size=1, max_size=12).filter(lambda name: name not in names).map(
            lambda name: (name, {**row, name: 1})),
    }
    if required:
        corruptions["missing_required"] = lambda row: st.sampled_from(required).map(
            lambda c: (c.name, {key: value for key, value in row.items() if key != c.name}))
        corruptions["null_required"] = lambda row: st.sampled_from(required).map(lambda c: setting(row, c, None))
    def wrong_inside(row: dict) -> st.SearchStrategy[tuple[str, dict]]:
        present = [c for c in nested if row.get(c.name) is not None] or nested
        return st.sampled_from(present).flatmap(lambda c: wrong_nested(c.spec, row.get(c.name)).map(
            lambda path_and_bad: (field_path([c.name, *path_and_bad[0]]), {**row, c.name: path_and_bad[1]})))

    if nested:  # a wrong value anywhere inside: the error names its whole path (inputs[3].tokens[2])
        corruptions["wrong_nested"] = wrong_inside
    if categorical:  # a string the model was not fit on: the error names the column
        corruptions["unknown_category"] = lambda row: st.sampled_from(categorical).flatmap(
            lambda c: st.text(max_size=16).filter(lambda text: text not in c.categories).map(
                lambda value: setting(row, c, value)))
    if floats:
        corruptions["non_finite"] = lambda row: st.tuples(st.sampled_from(floats), st.sampled_from(_NON_FINITE)).map(
            lambda pair: setting(row, pair[0], _RawJson(pair[1])))
    return corruptions


def _tensor_corruptions(tensor: Column) -> dict[str, Corruption]:
    def first_leaf_set(row: Any, leaf: Any) -> tuple[str, Any]:
        return "inputs", _replace_first_leaf(row, leaf)

    corruptions: dict[str, Corruption] = {
        "wrong_type": lambda row: wrong_value(tensor.type).map(lambda leaf: first_leaf_set(row, leaf)),
        "null_required": lambda row: st.just(first_leaf_set(row, None)),
        "wrong_row_shape": lambda row: st.sampled_from(_misshapen(row, tensor.shape)).map(lambda bad: ("inputs", bad)),
    }
    if tensor.type in FLOAT_BITS:
        corruptions["non_finite"] = lambda row: st.sampled_from(_NON_FINITE).map(
            lambda token: first_leaf_set(row, _RawJson(token)))
    return corruptions


def _replace_first_leaf(value: Any, leaf: Any) -> Any:
    return [_replace_first_leaf(value[0], leaf), *value[1:]] if isinstance(value, list) else leaf


def _misshapen(row: Any, shape: tuple[int, ...]) -> list[Any]:
    """The row one nesting level too deep and, for a list row, with a first dim of the wrong length."""
    return [[row], [] if shape[0] == -1 else [*row, row[0]]] if shape else [[row]]


@dataclass(frozen=True)
class _RawJson:
    token: str  # NaN, Infinity or -Infinity: json.dumps refuses to write them, a sloppy parser accepts them


_RAW_MARK = "\x00raw-json\x00"


def within_body_limit(request: dict, max_body_bytes: int) -> dict:
    """`request` with as many of its rows as fit in `max_body_bytes` encoded (at least one): a valid request is
    also one the server reads. A wide signature's full batch can be larger than the body limit (8 doubles ×
    10,000 rows is ~1.6 MB against 1 MiB); the server answers that 413, which says nothing about the model."""
    rows = request["inputs"]
    size = len(encode(request))
    while size > max_body_bytes and len(rows) > 1:
        rows = rows[:max(1, min(len(rows) - 1, len(rows) * max_body_bytes // size))]
        size = len(encode({**request, "inputs": rows}))
    return {**request, "inputs": rows}


def encode(document: Any) -> bytes:
    """JSON as a client would send it; _RawJson leaves become the bare NaN/Infinity tokens json.dumps refuses."""
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, default=lambda raw: _RAW_MARK + raw.token)
    for token in _NON_FINITE:
        text = text.replace(json.dumps(_RAW_MARK + token), token)
    return text.encode("utf-8")
