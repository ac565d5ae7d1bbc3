"""A request body decoded in one pass when every column is a named scalar (the common tabular signature).

pydantic validates trafficaware's full batch (32 rows of 6 columns) in 30–45 µs, half what its compiled model takes
to predict them (BENCHMARKS.md, session 14); msgspec decodes and checks the same body into the same dicts in about
half that time: JSON numbers for float columns (integers too, as floats; within float32's range for `float`),
integers within the column's bounds, no infinity, strict booleans and strings (a categorical column's own
categories only), no unknown or missing column, 1 to max_rows rows, an optional column null or absent (and then
left out).
It is a shortcut, not a second schema: a body it refuses for any reason (a bad value, a `params` object, another
top-level key) goes on to the pydantic model generated for the API (mf_schema), which accepts it or answers the
error with the JSON path of the first bad value. tests/test_decode.py checks on generated bodies that whatever
this accepts, pydantic accepts too, with equal values of the same types.
Copied verbatim into each model's folder by `factory render`; imports nothing heavy.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, Optional, Union

import msgspec

from mf_schema import FLOAT_MAX, FLOATS, INT_BOUNDS

# MLflow's column types whose strict pydantic check (mf_schema.value_type) has an exact msgspec equal. Datetimes
# (pydantic reads more ISO 8601 forms than RFC 3339), binary (a pattern), nested values and tensors are left to
# pydantic alone.
SCALARS: dict[str, Any] = {
    # pydantic's allow_inf_nan=False holds as is: JSON has no NaN, and msgspec refuses a number beyond a float's
    # range (1e400) where Python's json reads infinity.
    **{kind: float for kind in FLOATS},
    # float32's range, as pydantic's
    "float": Annotated[float, msgspec.Meta(ge=-FLOAT_MAX["float"], le=FLOAT_MAX["float"])],
    **{kind: Annotated[int, msgspec.Meta(ge=INT_BOUNDS[kind][0], le=INT_BOUNDS[kind][1])]
       for kind in ("long", "integer")},
    "boolean": bool,
    "string": str,
}


def decoder(inputs: list[dict], max_rows: int) -> Optional[Callable[[bytes], list[dict]]]:
    """A function from a request body to its rows (dicts keyed by column), raising msgspec.MsgspecError for any
    body it does not take; None when a column is not a named scalar of SCALARS."""
    fields: list[tuple] = []
    for index, spec in enumerate(inputs):
        # A categorical column takes its categories only, as mf_schema's check: msgspec's Literal of them.
        kind = Literal[tuple(spec["categories"])] if "categories" in spec else SCALARS.get(spec.get("type", ""))
        if kind is None or not _renamable(spec.get("name")):
            return None
        # Struct fields are identifiers; columns keep their own names ("surge multiplier") through `rename`.
        if spec.get("required", True):
            fields.append((f"c{index}", kind))
        else:
            fields.append((f"c{index}", Union[kind, None, msgspec.UnsetType], msgspec.UNSET))
    names = {f"c{index}": spec["name"] for index, spec in enumerate(inputs)}
    row = msgspec.defstruct("Row", fields, kw_only=True, forbid_unknown_fields=True, rename=names)
    rows = Annotated[list[row], msgspec.Meta(min_length=1, max_length=max_rows)]
    body = msgspec.defstruct("Body", [("inputs", rows)], forbid_unknown_fields=True)
    decode = msgspec.json.Decoder(body).decode

    def rows_of(raw: bytes) -> list[dict]:
        # to_builtins writes each row under the columns' own names and leaves an absent optional column out.
        return msgspec.to_builtins(decode(raw).inputs)

    return rows_of


def _renamable(name: Any) -> bool:
    """A column name msgspec can match: not empty, and (as it requires) no backslash, quote or control character."""
    return isinstance(name, str) and bool(name) and not any(char in '\\"' or char < " " for char in name)
