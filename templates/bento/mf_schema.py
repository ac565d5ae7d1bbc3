"""The request's schema, from the MLflow signature: strict pydantic types for rows and for `params`.

A bad request is rejected alone, before it can join a batch, with the JSON path of the first bad value
(`inputs[3].tokens[2]`, mf_http.json_path). Scalar columns, MLflow's nested types (`array` of any type,
`object` with typed, required or optional properties, `map` from string keys to a typed value) and a
single tensor. Copied verbatim into each model's folder by `factory render`; imports nothing heavy.
"""

from __future__ import annotations

import datetime
import json
import keyword
import re
from typing import Annotated, Any, Optional

from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, create_model,
                      with_config)
from pydantic_core import PydanticCustomError
from typing_extensions import NotRequired, TypedDict

# MLflow's integer types, and the numpy dtypes of a tensor: a value the dtype cannot hold is a 400, not the
# OverflowError numpy raises when the batch is built.
INT_BOUNDS = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1),
              **{f"int{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) for bits in (8, 16, 32, 64)},
              **{f"uint{bits}": (0, 2**bits - 1) for bits in (8, 16, 32, 64)}}
FLOATS = ("double", "float", "float16", "float32", "float64")
# MLflow's `float` column reaches the model as float32 (as a float32 or float16 tensor does): a larger value (1e39)
# turns into infinity when the batch is built, and the model then fails the row (a 500) where the request should
# get a 400 naming the value. The largest value of each as numpy prints it (np.finfo(...).max): every value up to
# it rounds to a finite one.
FLOAT_MAX = {"float": 3.4028235e38, "float32": 3.4028235e38, "float16": 65504.0}
NESTED = ("array", "object", "map")
# MLflow's schema enforcement converts each nested value through a pandas Series of its own, an array of
# scalars in one: 88 µs per non-empty array, 94-230 µs per map value, 27 ms for one array of 100,000 floats
# (measured). A 1 MiB body holds ~350,000 values: per request, the conversions are bounded to about a
# second of CPU (a batch of 32 rows with a 100-key map each takes 3,232).
MAX_CONVERSIONS = 5_000
# The longest list or map anywhere (an embedding of floats is one conversion, whatever its length).
MAX_ITEMS = 100_000
STRICT = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)
CLOSED = ConfigDict(extra="forbid")
# Strict: an ISO 8601 string only; lax pydantic would also take a number as a Unix time.
STRICT_DATETIME = Annotated[datetime.datetime, Field(strict=True)]
DATETIME = TypeAdapter(STRICT_DATETIME)
# A categorical column's error lists at most this many of its categories: a model may know thousands.
MAX_SHOWN = 10


def value_type(spec: dict, where: str) -> Any:
    """The pydantic annotation of one MLflow type (`{"type": ..., "items" | "properties" | "values": ...}`) or of
    a tensor's numpy dtype (`{"type": "uint8"}`)."""
    kind = spec.get("type")
    if kind == "array":
        return Annotated[list[value_type(spec["items"], where)], Field(max_length=MAX_ITEMS)]
    if kind == "map":
        return Annotated[dict[str, value_type(spec["values"], where)], Field(max_length=MAX_ITEMS)]
    if kind == "object":
        properties = [{"name": name, **prop} for name, prop in sorted(spec["properties"].items())]
        return _fields_dict(properties, "Object")
    if kind in FLOAT_MAX:
        return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-FLOAT_MAX[kind], le=FLOAT_MAX[kind])]
    if kind in FLOATS:
        return Annotated[float, Field(strict=True, allow_inf_nan=False)]
    if kind in INT_BOUNDS:
        low, high = INT_BOUNDS[kind]
        return Annotated[int, Field(strict=True, ge=low, le=high)]
    if kind in ("boolean", "bool"):
        return Annotated[bool, Field(strict=True)]
    if kind == "string" and "categories" in spec:
        return Annotated[str, Field(strict=True), AfterValidator(_one_of(spec["categories"]))]
    if kind == "string":
        return Annotated[str, Field(strict=True)]
    if kind == "datetime":
        return STRICT_DATETIME
    if kind == "binary":
        return Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
    raise ValueError(f"{where}: MLflow type {kind!r} is not supported by the generated service")


def _one_of(categories: list[str]) -> Any:
    """The check of a categorical column (factory/categorical.py: the registry model raises on any other string).
    Its error lists the categories as pydantic's Literal does, the first MAX_SHOWN of a longer list."""
    known = frozenset(categories)
    shown = [repr(value) for value in categories[:MAX_SHOWN]]
    if len(categories) > MAX_SHOWN:
        listed = f"one of the {len(categories)} categories the model was fit on: {', '.join(shown)}, …"
    else:
        listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"

    def check(value: str) -> str:
        if value not in known:
            raise PydanticCustomError("category", "Input should be {listed}", {"listed": listed})
        return value

    return check


def _field_name(index: int, column: str) -> str:
    # MLflow param names can be anything ("max tokens"); pydantic model fields must be identifiers.
    simple = re.sub(r"\W", "_", column)
    if simple.isidentifier() and not keyword.iskeyword(simple) and not simple.startswith("_") and simple == column:
        return column
    return f"col_{index}"


def _fields_dict(specs: list[dict], name: str) -> Any:
    """A dict keyed by MLflow name (a column, an object's property), one typed value each; an optional one may be
    absent or null, and stays absent, as MLflow passes it on. Validated straight into plain dicts, the rows the
    model's batch is built from: pydantic model instances took 45 µs to validate and 25 more to dump for
    trafficaware's 32-row request, a TypedDict 26 in all (BENCHMARKS.md)."""
    fields: dict[str, Any] = {}
    for index, spec in enumerate(specs):
        column = spec.get("name", f"c{index}")
        annotation = value_type(spec, column)
        fields[column] = annotation if spec.get("required", True) else NotRequired[Optional[annotation]]
    return with_config(CLOSED)(TypedDict(name, fields))


def inputs_type(inputs: list[dict], max_rows: int) -> Any:
    """The request's `inputs`: 1..max_rows rows and, for nested columns, at most MAX_CONVERSIONS of them."""
    rows = Annotated[list[row_model(inputs)], Field(min_length=1, max_length=max_rows)]
    return Annotated[rows, AfterValidator(_bounded)] if has_nested(inputs) else rows


def _bounded(rows: list) -> list:
    count = sum(_conversions(value) for row in rows for value in row.values() if isinstance(value, (dict, list)))
    if count > MAX_CONVERSIONS:
        raise ValueError(f"the rows' array, object and map values hold {count} parts MLflow converts one by one "
                         f"(each list, object and map, and each value not in a list), over the limit of "
                         f"{MAX_CONVERSIONS} per request; send fewer rows or smaller values")
    return rows


def _conversions(value: Any, in_list: bool = False) -> int:
    if isinstance(value, dict):
        return 1 + sum(_conversions(item) for item in value.values())
    if isinstance(value, list):
        return 1 + sum(_conversions(item, in_list=True) for item in value)
    return 0 if in_list else 1


def row_model(inputs: list[dict], name: str = "Row") -> Any:
    """A strict row type (a TypedDict; a tensor's nested lists): a bad request is rejected alone, before it can
    join a batch."""
    if inputs and inputs[0].get("type") == "tensor":
        return _tensor_row(inputs[0]["tensor-spec"])
    model = _fields_dict(inputs, name)
    if inputs and not any(spec.get("name") for spec in inputs):
        return Annotated[model, BeforeValidator(_positional(inputs))]
    return model


def _positional(inputs: list[dict]) -> Any:
    """Rows of a signature without column names (a type-hinted `predict(self, model_input: list[str])`, a model
    fit on a list of lists) as `mlflow models serve` takes them: the value itself for one column
    (`{"inputs": ["text"]}`), a list in column order for several; rows keyed c0, c1, … serve too."""
    names = [f"c{index}" for index in range(len(inputs))]
    specs = dict(zip(names, inputs))
    kind = inputs[0]["type"] if len(inputs) == 1 else None

    def keyed(row: Any) -> Any:
        if isinstance(row, dict) and (kind not in ("object", "map") or set(row) <= {"c0"}):
            value = row
        elif kind is not None and (kind == "array" or not isinstance(row, list)):
            value = {"c0": row}
        elif isinstance(row, list) and len(row) == len(names):
            value = dict(zip(names, row))
        else:
            raise PydanticCustomError(
                "row_shape", "a row of this model's {count} unnamed columns is a list of {count} values in column "
                "order, or an object keyed {keys}", {"count": len(names), "keys": ", ".join(names)})
        return {name: _as_json_reads(item, specs[name]) if name in specs else item for name, item in value.items()}

    return keyed


def _as_json_reads(value: Any, spec: dict) -> Any:
    """A value handed over by a validator is Python, where strict pydantic takes a datetime but not the ISO string
    a request holds: such strings are read as the request's JSON reads them (one that does not read stays, and
    is refused where it stands)."""
    kind = spec.get("type")
    if kind == "datetime" and isinstance(value, str):
        try:
            return DATETIME.validate_json(json.dumps(value))
        except ValidationError:
            return value
    if kind == "array" and isinstance(value, list):
        return [_as_json_reads(item, spec["items"]) for item in value]
    if kind == "map" and isinstance(value, dict):
        return {key: _as_json_reads(item, spec["values"]) for key, item in value.items()}
    if kind == "object" and isinstance(value, dict):
        return {key: _as_json_reads(item, spec["properties"][key]) if key in spec["properties"] else item
                for key, item in value.items()}
    return value


def has_nested(inputs: list[dict]) -> bool:
    return any(spec.get("type") in NESTED for spec in inputs)


def _tensor_row(spec: dict) -> Any:
    row: Any = value_type({"type": spec["dtype"]}, "the tensor")
    for size in reversed(spec["shape"][1:]):
        bounds = {} if size == -1 else {"min_length": size, "max_length": size}
        row = Annotated[list[row], Field(**({"min_length": 1} | bounds))]
    return row


def params_model(params: Optional[list[dict]]) -> Any:
    """The request's optional `params` object, from the signature's ParamSchema: each param of its type
    (a list of them for shape [-1]), its default when left out; any other name is a 400. Frozen and
    compared by value: the batcher merges only requests whose params are equal."""
    fields: dict[str, Any] = {}
    for index, spec in enumerate(params or []):
        annotation = value_type({"type": spec["type"]}, spec["name"])
        if spec.get("shape"):
            annotation = Annotated[list[annotation], Field(max_length=MAX_ITEMS)]
        default = spec.get("default")
        if default is None:
            annotation = Optional[annotation]
        elif spec["type"] == "datetime":  # the signature writes it as an ISO string
            default = ([datetime.datetime.fromisoformat(item) for item in default] if spec.get("shape")
                       else datetime.datetime.fromisoformat(default))
        fields[_field_name(index, spec["name"])] = (annotation, Field(default=default, alias=spec["name"]))
    return create_model("Params", __config__=STRICT, **fields)
