"""The pod's decoding shortcut (templates/bento/mf_decode.py) against the API's pydantic model (mf_schema): on
generated signatures and bodies, whatever the shortcut takes, pydantic takes with equal values of the same types;
what a valid request holds, the shortcut takes; a served request is answered alike either way."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any, Optional

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError, create_model

from factory.runtime import BENTO_TEMPLATES

sys.path.insert(0, str(BENTO_TEMPLATES))
import mf_decode  # noqa: E402
import mf_fast  # noqa: E402
import mf_schema  # noqa: E402

MAX_ROWS = 4
KINDS = ("double", "float", "long", "integer", "boolean", "string")
# Text spliced into the JSON where these strings stand: numbers json.dumps never writes.
RAW = {"__1e400__": "1e400", "__-1e400__": "-1e400", "__1.0__": "1.0", "__-0__": "-0", "__1e2__": "1e2",
       "__big__": "1" + "0" * 40, "__tiny__": "1e-400"}
# The double next to float32's largest value as mf_schema writes it (3.4028235e38): the least a float column refuses.
BEYOND_FLOAT32 = math.nextafter(mf_schema.FLOAT_MAX["float"], math.inf)
EDGES = [None, True, False, 0, 1, -1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 0.5, -0.0,
         1.7976931348623157e308, mf_schema.FLOAT_MAX["float"], BEYOND_FLOAT32, "", "x", "1", "surge multiplier", [], {},
         [1.0], {"a": 1}, *RAW]


def _request_model(inputs: list[dict]) -> Any:
    """The API's input model as BentoML builds it from `predict(self, inputs: Inputs, params: Optional[Params])`."""
    return create_model("Request", inputs=(mf_schema.inputs_type(inputs, MAX_ROWS), ...),
                        params=(Optional[mf_schema.params_model(None)], None))


def _canonical(rows: list[dict]) -> list:
    """Values with their types, -0.0 apart from 0.0: 1 == 1.0 == True in Python."""
    return [sorted((key, type(value).__name__, repr(value)) for key, value in row.items()) for row in rows]


def _near_miss(spec: dict) -> st.SearchStrategy:
    """Values just outside what the column takes."""
    kind = spec["type"]
    if "categories" in spec:  # a string it was not fit on
        return st.one_of(st.text(max_size=6).filter(lambda text: text not in spec["categories"]),
                         st.sampled_from([1, None, True, ["x"]]))
    if kind == "float":  # a double beyond float32's range (mf_schema.FLOAT_MAX["float"]) too
        return st.sampled_from(["__1e400__", "__-1e400__", "__big__", 1e39, -1e39, BEYOND_FLOAT32, -BEYOND_FLOAT32,
                                "1.5", True, None])
    if kind == "double":
        return st.sampled_from(["__1e400__", "__-1e400__", "1.5", True, None])
    if kind in ("long", "integer"):
        low, high = mf_schema.INT_BOUNDS[kind]
        return st.sampled_from([low - 1, high + 1, "__1.0__", "__1e2__", "__big__", 1.5, False, "1"])
    return st.sampled_from([0, 1, "true", None]) if kind == "boolean" else st.sampled_from([1, None, True, ["x"]])


def _valid(spec: dict) -> st.SearchStrategy:
    kind = spec["type"]
    if "categories" in spec:
        return st.sampled_from(spec["categories"])
    if kind == "float":  # float32's range, its bounds included
        return st.one_of(st.floats(-mf_schema.FLOAT_MAX["float"], mf_schema.FLOAT_MAX["float"]), st.integers(-(2**70), 2**70),
                         st.sampled_from([mf_schema.FLOAT_MAX["float"], -mf_schema.FLOAT_MAX["float"]]))
    if kind == "double":
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70))
    if kind in ("long", "integer"):
        low, high = mf_schema.INT_BOUNDS[kind]
        return st.integers(low, high)
    return st.booleans() if kind == "boolean" else st.text()


COLUMN = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(KINDS), "required": st.booleans()}),
    # a categorical column (factory/categorical.py): near-identical categories, so a near miss is close to one
    st.fixed_dictionaries({"type": st.just("string"), "required": st.booleans(),
                           "categories": st.lists(st.text(max_size=3), min_size=1, max_size=4, unique=True)}))
# Any name msgspec can match (mf_decode._renamable): spaces, punctuation, any script.
NAME = st.text(st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters='\\"'), min_size=1, max_size=12)
SIGNATURE = st.lists(NAME, min_size=1, max_size=5, unique=True).flatmap(
    lambda names: st.tuples(*[COLUMN.map(lambda spec, name=name: {"name": name, **spec}) for name in names]).map(list))


@st.composite
def _row(draw: Any, inputs: list[dict]) -> dict:
    row = {}
    for spec in inputs:
        if spec["required"] or draw(st.booleans()):
            row[spec["name"]] = draw(_valid(spec))
        elif draw(st.booleans()):
            row[spec["name"]] = None
    return row


@st.composite
def _body(draw: Any, inputs: list[dict], mutate: bool) -> bytes:
    """A valid body, or one a single change away from valid: where a shortcut that takes too much shows."""
    rows = draw(st.lists(_row(inputs), min_size=1, max_size=MAX_ROWS))
    body: dict[str, Any] = {"inputs": rows}
    change = draw(st.sampled_from(["cell", "cell", "cell", "missing", "extra", "top", "count"])) if mutate else None
    row, spec = draw(st.sampled_from(rows)), draw(st.sampled_from(inputs))
    if change == "cell":
        row[spec["name"]] = draw(st.one_of(_near_miss(spec), st.sampled_from(EDGES)))
    elif change == "missing":
        row.pop(spec["name"], None)
    elif change == "extra":
        row[draw(NAME)] = draw(st.sampled_from(EDGES))
    elif change == "top":
        body[draw(st.sampled_from(["params", "extra", "inputs "]))] = draw(st.sampled_from(EDGES))
    elif change == "count":
        body["inputs"] = rows * (MAX_ROWS + 1) if draw(st.booleans()) else []
    text = json.dumps(body)
    for marker, raw in RAW.items():
        text = text.replace(json.dumps(marker), raw)
    return text.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), inputs=SIGNATURE)
def test_what_the_shortcut_takes_pydantic_takes_alike(data: Any, inputs: list[dict]) -> None:
    rows_of = mf_decode.decoder(inputs, MAX_ROWS)
    body = data.draw(_body(inputs, mutate=True))
    try:
        fast = rows_of(body)
    except msgspec.MsgspecError:
        return
    assert _canonical(fast) == _canonical(_request_model(inputs).model_validate_json(body).inputs), body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), inputs=SIGNATURE)
def test_a_valid_request_takes_the_shortcut(data: Any, inputs: list[dict]) -> None:
    body = data.draw(_body(inputs, mutate=False))
    assert _canonical(mf_decode.decoder(inputs, MAX_ROWS)(body)) == _canonical(
        _request_model(inputs).model_validate_json(body).inputs)


@pytest.mark.parametrize("inputs", [
    [{"type": "double", "name": "x"}, {"type": "datetime", "name": "when"}],
    [{"type": "binary", "name": "image"}],
    [{"type": "array", "name": "tokens", "items": {"type": "string"}}],
    [{"type": "map", "name": "counts", "values": {"type": "long"}}],
    [{"type": "object", "name": "trip", "properties": {"km": {"type": "double", "required": True}}}],
    [{"type": "double"}, {"type": "double"}],  # unnamed columns: rows may be lists
    [{"type": "double", "name": 'a"b'}], [{"type": "double", "name": "tab\tcolumn"}],  # msgspec cannot match these
    [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}],
])
def test_signatures_beyond_named_scalars_have_no_shortcut(inputs: list[dict]) -> None:
    assert mf_decode.decoder(inputs, MAX_ROWS) is None


def test_a_number_beyond_a_float_is_refused_by_msgspec_itself() -> None:
    """No bound in mf_decode keeps infinity out: msgspec refuses 1e400 where Python's json reads inf."""
    rows_of = mf_decode.decoder([{"type": "double", "name": "x"}], MAX_ROWS)
    for number in (b"1e400", b"-1e400", b"1" + b"0" * 400):
        with pytest.raises(msgspec.ValidationError, match="Number out of range"):
            rows_of(b'{"inputs": [{"x": %s}]}' % number)


@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("number, refused", [
    (b"1e39", "less than or equal to"), (b"-1e39", "greater than or equal to"), (b"3.40282351e38", "less than"),
    (b"1" + b"0" * 40, "less than"),  # a JSON integer
    (b"3.4028235e38", None), (b"-3.4028235e38", None), (b"1e38", None),
])
def test_a_float_column_takes_float32s_range_and_names_a_value_beyond_it(number: bytes, refused: Optional[str],
                                                                         shortcut: bool) -> None:
    """MLflow's `float` is float32: 1e39 would reach the model as infinity and fail its row with a 500."""
    body = b'{"inputs": [{"f": %s, "d": %s}]}' % (number, number)
    status, answer = _served([{"type": "float", "name": "f"}, {"type": "double", "name": "d"}], body, shortcut)
    if refused is None:
        assert status == 200 and answer == [{"f": float(number), "d": float(number)}]
    else:
        assert status == 400 and answer["error"]["field"] == "inputs[0].f" and refused in answer["error"]["message"]


@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("categories, value, message", [
    (["PHV", "TAXI"], "BUS", "inputs[0].segment: Input should be 'PHV' or 'TAXI'"),
    (["TAXI"], "taxi", "inputs[0].segment: Input should be 'TAXI'"),
    ([f"c{index:02}" for index in range(12)], "c12", "inputs[0].segment: Input should be one of the 12 categories "
     "the model was fit on: 'c00', 'c01', 'c02', 'c03', 'c04', 'c05', 'c06', 'c07', 'c08', 'c09', …"),
    (["PHV", "TAXI"], 1, "inputs[0].segment: Input should be a valid string"),
])
def test_a_categorical_column_refuses_another_value_naming_the_field_and_its_categories(
        categories: list[str], value: Any, message: str, shortcut: bool) -> None:
    inputs = [{"type": "string", "name": "segment", "categories": categories}, {"type": "double", "name": "km"}]
    status, answer = _served(inputs, json.dumps({"inputs": [{"segment": value, "km": 1}]}).encode(), shortcut)
    assert (status, answer["error"]["field"], answer["error"]["message"]) == (400, "inputs[0].segment", message)
    assert _served(inputs, json.dumps({"inputs": [{"segment": categories[-1], "km": 1}]}).encode(), shortcut) == (
        200, [{"segment": categories[-1], "km": 1.0}])


TRIP = [{"type": "double", "name": "surge multiplier", "required": True},
        {"type": "long", "name": "hour", "required": True},
        {"type": "string", "name": "city", "required": False}]


@pytest.mark.parametrize("body", [
    {"inputs": [{"surge multiplier": 1, "hour": 3}, {"surge multiplier": 1.5, "hour": 4, "city": None}]},
    {"inputs": [{"surge multiplier": 1.5, "hour": 4, "city": "TAXI"}], "params": None},
    {"inputs": [{"surge multiplier": 1.5, "hour": 4}], "ignored": True},  # BentoML's model ignores unknown keys
    {"inputs": [{"surge multiplier": "1.5", "hour": 4}]},
    {"inputs": [{"surge multiplier": 1.5, "hour": 4.0}]},
    {"inputs": [{"surge multiplier": 1.5, "hour": 2**63}]},
    {"inputs": [{"surge multiplier": 1.5}]},
    {"inputs": [{"surge multiplier": 1.5, "hour": 4, "town": "x"}]},
    {"inputs": []},
    {"inputs": [{"surge multiplier": 1.5, "hour": 4}] * (MAX_ROWS + 1)},
    {"inputs": [{"surge multiplier": 1.5, "hour": 4}], "params": {"temperature": 1}},
    {"dataframe_records": [{"surge multiplier": 1.5, "hour": 4}]},
    [1, 2],
])
def test_the_pod_answers_alike_with_and_without_the_shortcut(body: Any) -> None:
    assert _served(TRIP, json.dumps(body).encode(), shortcut=True) == _served(TRIP, json.dumps(body).encode(),
                                                                                shortcut=False)


def test_the_shortcut_is_what_answers_a_valid_request() -> None:
    """The rows reach the service from the shortcut, not from pydantic (whose model here refuses everything)."""
    class Refusing:
        @staticmethod
        def model_validate_json(body: bytes) -> Any:
            raise ValidationError.from_exception_data("Request", [])

    app = mf_fast.FastPredict(None, Refusing, lambda: _echo, max_bytes=1 << 20,
                              rows_of=mf_decode.decoder(TRIP, MAX_ROWS))
    body = b'{"inputs": [{"surge multiplier": 1, "hour": 3}]}'
    assert _answered(app, body) == (200, [{"hour": 3, "surge multiplier": 1.0}])


async def _echo(rows: list, params: Any = None) -> list:
    return rows


def _served(inputs: list[dict], body: bytes, shortcut: bool) -> tuple[int, Any]:
    rows_of = mf_decode.decoder(inputs, MAX_ROWS) if shortcut else None
    app = mf_fast.FastPredict(None, _request_model(inputs), lambda: _echo, max_bytes=1 << 20, rows_of=rows_of)
    return _answered(app, body)


def _answered(app: Any, body: bytes) -> tuple[int, Any]:
    async def scenario() -> tuple[int, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model") as client:
            answer = await client.post("/predict", content=body, headers={"content-type": "application/json"})
        return answer.status_code, answer.json()

    return asyncio.run(scenario())
