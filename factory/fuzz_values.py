"""Hypothesis strategies for one value of an MLflow type: valid ones, and wrong ones with the path at fault.

Scalars (MLflow's DataType names and numpy dtype names for tensors), and MLflow's nested types as
`signature.to_dict()` writes them: `{"type": "array", "items": T}`, `{"type": "object", "properties":
{name: T + "required"}}`, `{"type": "map", "values": T}`. Nested values stay small (a few items per
level): the served API bounds them per row (templates/bento/mf_schema.py) far above that.
"""

from __future__ import annotations

import base64
import functools
from datetime import datetime, timezone
from typing import Any

from hypothesis import strategies as st

from factory.errors import ServeError
from factory.runtime import bento_module

SCALAR_TYPES = ("binary", "boolean", "datetime", "double", "float", "integer", "long", "string")
NESTED_TYPES = ("array", "map", "object")
FLOAT_BITS = {"double": 64, "float": 32, "float64": 64, "float32": 32, "float16": 16}
# Valid floats stay within ±1e12 (or the nearest value the width holds): any standardizing model
# overflows to inf on 1e308, which says nothing about the model's real inputs. The service itself
# still accepts every finite double.
_PLAUSIBLE = {64: 1e12, 32: 999999995904.0, 16: 65504.0}
# JSON integers are accepted for float inputs; beyond these a float of that width rounds them.
_EXACT_INTEGER = {64: 2**53, 32: 2**24, 16: 2**11}
INT_BOUNDS = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1),
              **{f"int{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) for bits in (8, 16, 32, 64)},
              **{f"uint{bits}": (0, 2**bits - 1) for bits in (8, 16, 32, 64)}}
# Years pandas' datetime64[ns] holds, so a pandas-based service is not blamed for its own range.
_DATETIMES = st.datetimes(datetime(1900, 1, 1), datetime(2200, 12, 31), timezones=st.none() | st.just(timezone.utc))
# Types that are neither floats nor integers: (valid values, values of the wrong type).
_OTHER_TYPES = {
    "boolean": (st.booleans(), [1, 0, "true"]),
    "string": (st.text(max_size=16), [1, True, ["text"]]),
    "datetime": (_DATETIMES.map(datetime.isoformat), ["not a date", "2021-02-30T00:00:00", 1700000000]),
    "binary": (st.binary(max_size=24).map(lambda raw: base64.b64encode(raw).decode()), ["not base64!", "@@@@", 1]),
}
_OTHER_TYPES["bool"] = _OTHER_TYPES["boolean"]  # numpy's name for it
_NOT_A_CONTAINER = {"array": ["text", 1, {"item": 1}], "map": ["text", 1, [1]], "object": ["text", 1, [1]]}
MAX_NESTED_ITEMS = 3


def check_type(spec: Any, where: str) -> None:
    """A ServeError naming `where` (and the path inside the type) unless the service can take `spec`."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in SCALAR_TYPES:
        return
    if kind not in NESTED_TYPES:
        raise ServeError(f"{where} has unsupported type {kind!r} (supported: "
                         f"{', '.join(SCALAR_TYPES + NESTED_TYPES)})")
    inner = {"array": "items", "map": "values"}.get(kind)
    if inner:
        check_type(spec.get(inner), f"{where} {inner}")
        return
    properties = spec.get("properties")
    if not (isinstance(properties, dict) and properties):
        raise ServeError(f"{where} is an object without properties")
    for name, prop in sorted(properties.items()):
        check_type(prop, f"{where} property {name!r}")


def valid_value(spec: Any) -> st.SearchStrategy:
    """`spec`: a scalar or tensor dtype name, or an MLflow type dict."""
    kind = spec["type"] if isinstance(spec, dict) else spec
    if isinstance(spec, dict) and "categories" in spec:  # a categorical column (fuzz_requests.Column.categories)
        return st.sampled_from(spec["categories"])
    if kind == "array":
        return st.lists(valid_value(spec["items"]), max_size=MAX_NESTED_ITEMS)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), valid_value(spec["values"]), max_size=MAX_NESTED_ITEMS)
    if kind == "object":
        # An optional property is left out rather than null: a pydantic-typed model may default it.
        properties = spec["properties"]
        return st.fixed_dictionaries({name: valid_value(prop) for name, prop in sorted(properties.items())
                                      if prop.get("required", True)},
                                     optional={name: valid_value(prop) for name, prop in sorted(properties.items())
                                               if not prop.get("required", True)})
    if kind in FLOAT_BITS:
        bits = FLOAT_BITS[kind]
        bound = _PLAUSIBLE[bits]
        return (st.floats(-bound, bound, width=bits, allow_nan=False, allow_infinity=False)
                | st.integers(-_EXACT_INTEGER[bits], _EXACT_INTEGER[bits]))
    if kind in INT_BOUNDS:
        return st.integers(*INT_BOUNDS[kind])
    return _OTHER_TYPES[kind][0]


def wrong_value(spec: Any) -> st.SearchStrategy:
    """A value of the wrong type for a scalar, or a non-container for a nested type (at the value's own path)."""
    kind = spec["type"] if isinstance(spec, dict) else spec
    if kind in _NOT_A_CONTAINER:
        return st.sampled_from(_NOT_A_CONTAINER[kind])
    if kind in FLOAT_BITS:
        beyond = [1e39, -1e39] if FLOAT_BITS[kind] == 32 else [1e5, -1e5] if FLOAT_BITS[kind] == 16 else []
        return st.sampled_from(["1.5", True, [1.0], {"value": 1.0}, *beyond])  # beyond: a float32's or float16's range
    if kind in INT_BOUNDS:
        low, high = INT_BOUNDS[kind]
        return st.sampled_from([1.5, True, "3", low - 1, high + 1])
    return st.sampled_from(_OTHER_TYPES[kind][1])


def wrong_nested(spec: dict, value: Any) -> st.SearchStrategy[tuple[list, Any]]:
    """(the path inside `value` at fault, `value` with one bad part): the value itself of the wrong
    kind, or one item, property or map value wrong at any depth; an object also missing a required
    property or holding an unknown one."""
    own = wrong_value(spec).map(lambda bad: ([], bad))
    kind = spec["type"]
    if kind == "array" and value:
        inside = st.integers(0, len(value) - 1).flatmap(lambda index: _replaced(spec["items"], value, index))
        return st.one_of(own, inside)
    if kind == "map" and value:
        inside = st.sampled_from(sorted(value)).flatmap(lambda key: _replaced(spec["values"], value, key))
        return st.one_of(own, inside)
    if kind == "object":
        properties = spec["properties"]
        present = sorted(key for key in value if key in properties)
        required = sorted(name for name, prop in properties.items() if prop.get("required", True))
        unknown = st.text(min_size=1, max_size=8).filter(lambda name: name not in properties).map(
            lambda name: ([name], {**value, name: 1}))
        kinds = [own, unknown]
        if present:
            kinds.append(st.sampled_from(present).flatmap(lambda key: _replaced(properties[key], value, key)))
        if required:
            kinds.append(st.sampled_from(required).map(
                lambda name: ([name], {key: item for key, item in value.items() if key != name})))
        return st.one_of(*kinds)
    return own


def _replaced(spec: Any, container: Any, key: Any) -> st.SearchStrategy[tuple[list, Any]]:
    inner = wrong_nested(spec, container[key]) if isinstance(spec, dict) and spec["type"] in NESTED_TYPES \
        else wrong_value(spec).map(lambda bad: ([], bad))

    def put(path_and_bad: tuple[list, Any]) -> tuple[list, Any]:
        path, bad = path_and_bad
        copy = list(container) if isinstance(container, list) else dict(container)
        copy[key] = bad
        return [key, *path], copy

    return inner.map(put)


def field_path(parts: list) -> str:
    """How the served API names a value in its error's `field` (mf_http.json_path)."""
    return _served_http().json_path(parts)


@functools.cache
def _served_http() -> Any:
    return bento_module("mf_http")
