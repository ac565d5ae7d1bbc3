"""Array, object and map columns and inference params: what the fuzzer draws passes the served schema
(templates/bento/mf_schema.py) and MLflow's own schema enforcement; what it corrupts is refused naming the
JSON path; pinned error messages through the pod's POST /predict; params reach the model, and requests
with different params never share a model run. Every hypothesis run is derandomized."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from datetime import datetime
from typing import Any, Optional

import httpx
import mlflow
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from mlflow.models.utils import _enforce_params_schema, _enforce_schema
from mlflow.types.schema import ParamSchema, Schema
from pydantic import BaseModel, ValidationError, create_model

from factory import pyfunc_answers
from factory.fuzz import (TENSOR_DTYPES, _encode, as_clients_send, invalid_requests_by_kind, signature_columns,
                          signature_params, unnamed_columns, valid_request)
from factory.runtime import BENTO_TEMPLATES

sys.path.insert(0, str(BENTO_TEMPLATES))
import mf_batch  # noqa: E402
import mf_fast  # noqa: E402
import mf_flavors  # noqa: E402
import mf_http  # noqa: E402
import mf_inputs  # noqa: E402
import mf_runtime  # noqa: E402
import mf_schema  # noqa: E402

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=60,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GUARD_S = 30
ITEM = {"type": "object", "properties": {
    "name": {"type": "string", "required": True},
    "sizes": {"type": "array", "items": {"type": "integer"}, "required": True},
    "weight": {"type": "float", "required": True},
    "note": {"type": "string", "required": False},
    "seen at": {"type": "datetime", "required": False}}}
# As `ModelSignature.to_dict()` writes them (mlflow 3.17.2): every scalar type inside a nested one.
INPUTS = [
    {"type": "array", "items": {"type": "double"}, "name": "vec", "required": True},
    {"type": "array", "items": {"type": "string"}, "name": "tokens", "required": True},
    {"type": "array", "items": {"type": "array", "items": {"type": "long"}}, "name": "grid", "required": True},
    {"type": "double", "name": "weight", "required": True},
    {"type": "object", **{key: value for key, value in ITEM.items() if key != "type"}, "name": "item", "required": True},
    {"type": "map", "values": {"type": "binary"}, "name": "blobs", "required": False},
    {"type": "map", "values": {"type": "array", "items": {"type": "boolean"}}, "name": "flag sets", "required": True},
    {"type": "array", "items": {"type": "datetime"}, "name": "times", "required": True},
    {"type": "array", "items": ITEM, "name": "items", "required": False},
]
PARAMS = [{"name": "temperature", "type": "double", "default": 0.7, "shape": None},
          {"name": "top_k", "type": "long", "default": 3, "shape": None},
          {"name": "biases", "type": "double", "default": [0.0], "shape": [-1]},
          {"name": "mode", "type": "string", "default": "fast", "shape": None},
          {"name": "greedy", "type": "boolean", "default": False, "shape": None},
          {"name": "since", "type": "datetime", "default": "2024-01-01T00:00:00", "shape": None},
          {"name": "ratio", "type": "float", "default": 0.5, "shape": None},
          {"name": "seeds", "type": "integer", "default": [1], "shape": [-1]}]
SIGNATURE = {"inputs": json.dumps(INPUTS), "params": json.dumps(PARAMS)}
HINTED = [{"type": "object", "properties": {"role": {"type": "string", "required": True},  # list[pydantic model]
                                            "weight": {"type": "double", "required": False}}, "required": True}]
MAX_ROWS = 4
PARAMS_MODEL = mf_schema.params_model(PARAMS)


def _request_model(inputs: list[dict], params: Optional[list[dict]] = None) -> type[BaseModel]:
    """What BentoML generates for the served `predict(self, inputs: Inputs, params: Optional[Params] = None)`."""
    return create_model("Request", inputs=(mf_schema.inputs_type(inputs, MAX_ROWS), ...),
                        params=(Optional[mf_schema.params_model(params)], None))


REQUEST = _request_model(INPUTS, PARAMS)


# --- what the fuzzer draws against MLflow's own schema enforcement ------------------------------------


@DETERMINISTIC
@given(valid_request(signature_columns(SIGNATURE), MAX_ROWS, signature_params(SIGNATURE)))
def test_valid_requests_pass_the_served_schema_and_mlflows_enforcement(request: dict) -> None:
    validated = REQUEST.model_validate_json(_encode(request))
    schema = Schema.from_json(SIGNATURE["inputs"])
    # The served frame (validated rows) and the golden one (rows as sent) are both what MLflow takes, alike.
    served = _enforce_schema(mf_inputs.frame(validated.inputs, INPUTS), schema)
    as_sent = _enforce_schema(mf_inputs.frame(request["inputs"], INPUTS), schema)
    assert served.to_dict("records") == as_sent.to_dict("records")
    params = ParamSchema.from_json(SIGNATURE["params"])
    if "params" in request:
        assert _enforce_params_schema(validated.params.model_dump(by_alias=True), params) == \
            _enforce_params_schema(dict(request["params"]), params)


@DETERMINISTIC
@given(valid_request(signature_columns(HINTED), MAX_ROWS))
def test_an_unnamed_object_column_is_the_list_a_type_hinted_model_takes(request: dict) -> None:
    """MLflow hands a `list[pydantic model]` predict the objects of the column labelled 0."""
    from mlflow.types.type_hints import _convert_data_to_type_hint
    from pydantic import BaseModel as Hint

    class Message(Hint):
        role: str
        weight: Optional[float] = None

    frame = mf_inputs.frame(_request_model(HINTED).model_validate_json(_encode(request)).inputs, HINTED)
    converted = _convert_data_to_type_hint(frame, list[Message])
    assert [Message.model_validate(item) for item in converted] == [Message(**row["c0"]) for row in request["inputs"]]


NESTED_KINDS = ("wrong_nested", "unknown_param", "wrong_param_type", "params_not_object")


@pytest.mark.parametrize("kind", NESTED_KINDS)
def test_invalid_requests_are_refused_naming_the_json_path(kind: str) -> None:
    strategy = invalid_requests_by_kind(signature_columns(SIGNATURE), MAX_ROWS, 1 << 20,
                                        signature_params(SIGNATURE))[kind]

    @DETERMINISTIC
    @given(strategy)
    def refused_at_the_field(example: tuple) -> None:
        _, body, field = example
        with pytest.raises(ValidationError) as raised:
            REQUEST.model_validate_json(body)
        first = raised.value.errors()[0]  # the pod names the first error (mf_fast)
        assert field in mf_http.json_path(list(first["loc"])), (field, first)

    refused_at_the_field()


# --- tensors: every numpy dtype the fuzzer draws, through the served schema to MLflow's enforcement -----

FEW = settings(DETERMINISTIC, max_examples=20)  # 12 dtypes; a bool, or an integer out of range, comes up at once


@pytest.mark.parametrize("dtype", TENSOR_DTYPES)
def test_a_tensor_request_is_taken_whole_or_refused_before_the_model(dtype: str) -> None:
    """A bool tensor took no request (400: "a valid integer") and an integer tensor took values its dtype cannot
    hold, so numpy's OverflowError reached the client as a 500 (uint8 -1, int64 -2**63-1: stranger sweep 4)."""
    import numpy as np
    from mlflow.types.schema import TensorSpec

    schema = Schema([TensorSpec(np.dtype(dtype), (-1, -1, 2))])
    inputs = json.loads(schema.to_json())
    request_model = _request_model(inputs)
    columns = signature_columns({"inputs": schema.to_json()})

    @FEW
    @given(valid_request(columns, MAX_ROWS))
    def taken(request: dict) -> None:
        served = mf_inputs.tensor(request_model.model_validate_json(_encode(request)).inputs, inputs)
        assert served.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(_enforce_schema(served, schema), np.asarray(request["inputs"], dtype=dtype))

    @FEW
    @given(invalid_requests_by_kind(columns, MAX_ROWS)["wrong_type"])
    def refused(example: tuple) -> None:
        with pytest.raises(ValidationError):
            request_model.model_validate_json(example[1])

    taken()
    refused()


# --- the pod's POST /predict: pinned messages ---------------------------------------------------------

ROW = {"vec": [1, 2.5], "tokens": ["a"], "grid": [[1], []], "weight": 1, "flag sets": {},
       "item": {"name": "n", "sizes": [1], "weight": 0.5}, "times": ["2024-01-01T00:00:00Z"]}


def _with(**changes: Any) -> dict:
    return {**ROW, **changes}


def _post(*bodies: Any, request_model: type[BaseModel] = REQUEST) -> list[tuple[int, Any]]:
    seen: list = []

    async def answer(rows: list, params: Any = None) -> list:
        seen.append(params)
        return [1.0] * len(rows)

    app = mf_fast.FastPredict(mf_http.ErrorShape(None, max_bytes=2 << 20), request_model, lambda: answer,
                              max_bytes=2 << 20)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model") as client:
            return [await client.post("/predict", content=body if isinstance(body, bytes) else json.dumps(body),
                                      headers={"content-type": "application/json"}) for body in bodies]

    return [(response.status_code, response.json()) for response in asyncio.run(scenario())]


def _error(message: str, field: Optional[str]) -> tuple[int, dict]:
    return 400, {"error": {"code": "invalid_input", "message": message, "field": field}}


@pytest.mark.parametrize("body, expected", [
    ({"inputs": [_with(tokens=["a", "b", 3])]}, _error("inputs[0].tokens[2]: Input should be a valid string",
                                                       "inputs[0].tokens[2]")),
    ({"inputs": [ROW, _with(grid=[[1], [2, 2.5]])]}, _error("inputs[1].grid[1][1]: Input should be a valid integer",
                                                            "inputs[1].grid[1][1]")),
    ({"inputs": [_with(vec=[1.0, None])]}, _error("inputs[0].vec[1]: Input should be a valid number",
                                                  "inputs[0].vec[1]")),
    ({"inputs": [_with(vec="1.0")]}, _error("inputs[0].vec: Input should be a valid array", "inputs[0].vec")),
    ({"inputs": [_with(item={"sizes": [1], "weight": 1.0})]}, _error("inputs[0].item.name: Field required",
                                                                     "inputs[0].item.name")),
    ({"inputs": [_with(item={**ROW["item"], "colour": "red"})]}, _error(
        "inputs[0].item.colour: Extra inputs are not permitted", "inputs[0].item.colour")),
    ({"inputs": [_with(item={**ROW["item"], "seen at": 1700000000})]}, _error(
        'inputs[0].item["seen at"]: Input should be a valid datetime', 'inputs[0].item["seen at"]')),
    ({"inputs": [_with(**{"flag sets": {"a b": [True, 1]}})]}, _error(
        'inputs[0]["flag sets"]["a b"][1]: Input should be a valid boolean', 'inputs[0]["flag sets"]["a b"][1]')),
    ({"inputs": [_with(blobs={"k": "not base64!"})]}, _error(
        "inputs[0].blobs.k: String should match pattern '^[A-Za-z0-9+/]*={0,2}$'", "inputs[0].blobs.k")),
    ({"inputs": [_with(times=["yesterday"])]}, _error(
        "inputs[0].times[0]: Input should be a valid datetime, input is too short", "inputs[0].times[0]")),
    ({"inputs": [ROW], "params": {"tempo": 1}}, _error("params.tempo: Extra inputs are not permitted", "params.tempo")),
    ({"inputs": [ROW], "params": {"top_k": 2.5}}, _error("params.top_k: Input should be a valid integer",
                                                         "params.top_k")),
    ({"inputs": [ROW], "params": {"biases": [1, "2"]}}, _error("params.biases[1]: Input should be a valid number",
                                                               "params.biases[1]")),
    ({"inputs": [ROW], "params": [1]}, _error("params: Input should be an object", "params")),
    ({"inputs": [_with(grid=[[]] * 5000)]}, _error(
        "inputs: Value error, the rows' array, object and map values hold 5009 parts MLflow converts one by one "
        "(each list, object and map, and each value not in a list), over the limit of 5000 per request; send fewer "
        "rows or smaller values", "inputs")),
    ({"inputs": [_with(vec=[0] * 100_001)]}, _error(
        "inputs[0].vec: List should have at most 100000 items after validation, not 100001", "inputs[0].vec")),
    (b'{"inputs": [{"vec": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}", _error(
        'Invalid JSON: recursion limit exceeded at line 1 column 219' + mf_http.ENVELOPE_HINT, None)),
])
def test_bad_nested_values_and_params_are_one_400_naming_the_path(body: Any, expected: tuple) -> None:
    assert _post(body) == [expected]


def test_good_requests_reach_the_model_with_their_params() -> None:
    """Optional columns and properties may be left out or null; params are validated, defaults filled in."""
    embedding = [0.25] * 4096  # one array: one conversion, whatever its length
    answers = _post({"inputs": [ROW, _with(blobs=None, items=[ROW["item"]], vec=embedding)]},
                    {"inputs": [ROW], "params": {"top_k": 7, "biases": [1, 2.5]}}, {"inputs": [ROW], "params": None})
    assert [status for status, _ in answers] == [200, 200, 200]


# --- params reach the model; requests with different params never share a run ---------------------------


def test_requests_with_different_params_are_never_merged_into_one_run() -> None:
    runs: list[tuple[list, Any]] = []
    entered, gate = threading.Event(), threading.Event()

    def model(rows: list, params: Any = None) -> list:
        runs.append((list(rows), params))
        entered.set()
        assert gate.wait(GUARD_S)
        return rows

    hot, cold = PARAMS_MODEL(temperature=1.5), PARAMS_MODEL(temperature=0.1)

    async def scenario() -> list:
        batcher = mf_batch.Batcher(model, max_rows=32, budget_ms=10_000)
        first = asyncio.create_task(batcher.submit([0], hot))
        assert await asyncio.to_thread(entered.wait, GUARD_S)  # busy: everything after this queues
        queued = [asyncio.create_task(batcher.submit(rows, params)) for rows, params in
                  (([1], cold), ([2], PARAMS_MODEL(temperature=0.1)), ([3], hot), ([4], None), ([5], None))]
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        return [await first, *[await task for task in queued]]

    assert asyncio.run(scenario()) == [[0], [1], [2], [3], [4], [5]]
    # Equal params (by value) merge; a request never overtakes one queued before it.
    assert runs == [([0], hot), ([1, 2], cold), ([3], hot), ([4, 5], None)]


def test_the_predictor_passes_params_and_leaves_out_what_the_request_left_out() -> None:
    seen: list = []

    def predict(frame: Any, params: Optional[dict] = None) -> list:
        seen.append((frame["item"].tolist(), params))
        return [0.0] * len(frame)

    predictor = mf_runtime.Predictor.__new__(mf_runtime.Predictor)
    predictor.inputs, predictor.tensor, predictor.allow_non_finite = INPUTS, False, False
    predictor.model = mf_flavors.LoadedModel(predict, "frame")
    rows = REQUEST.model_validate_json(json.dumps({"inputs": [ROW]})).inputs
    predictor.predict(rows)
    predictor.predict(rows, PARAMS_MODEL(top_k=9))
    item = {"name": "n", "sizes": [1], "weight": 0.5}
    assert seen == [([item], None), ([item], {"temperature": 0.7, "top_k": 9, "biases": [0.0], "mode": "fast",
                                              "greedy": False, "since": datetime(2024, 1, 1), "ratio": 0.5,
                                              "seeds": [1]})]


class _Scorer(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):  # noqa: ANN001 (type hints change how MLflow calls it)
        scale = params["temperature"] + sum(params["biases"])
        return [scale * (sum(vec) + len(item["sizes"]) + len(flags)) for vec, item, flags in
                zip(model_input["vec"], model_input["item"], model_input["flag sets"])]


def test_a_real_pyfunc_model_answers_the_served_path_as_golden_records_it(tmp_path) -> None:
    """The served predictor (validated rows, params model) and the golden recorder (rows and params as sent,
    MLflow's pyfunc) agree on a real PythonModel whose signature has nested columns and params."""
    from mlflow.models import ModelSignature

    signature = ModelSignature(inputs=Schema.from_json(SIGNATURE["inputs"]),
                               params=ParamSchema.from_json(SIGNATURE["params"]))
    mlflow.pyfunc.save_model(str(tmp_path / "model"), python_model=_Scorer(), signature=signature,
                             pip_requirements=["mlflow"])
    requests = [{"inputs": [ROW, _with(vec=[3.5], **{"flag sets": {"x": [True]}})]},
                {"inputs": [ROW], "params": {"temperature": 2, "biases": [1, 0.5]}}]
    golden = pyfunc_answers.answers(str(tmp_path / "model"), INPUTS, requests, mf_inputs, here=True)
    predictor = mf_runtime.Predictor(str(tmp_path / "model"), {"signature": {"inputs": INPUTS, "params": PARAMS},
                                                               "flavor": {"loader": "pyfunc"}})
    served = []
    for request in requests:
        validated = REQUEST.model_validate_json(json.dumps(request))
        served.append({"outputs": predictor.predict(validated.inputs, validated.params)})
    assert served == golden == [{"outputs": [pytest.approx(3.15), pytest.approx(3.85)]},
                                {"outputs": [pytest.approx(15.75)]}]


# --- a signature without column names, called as `mlflow models serve` is called ------------------------

TEXT = [{"type": "string", "required": True}]  # a type-hinted predict(self, model_input: list[str])
PAIR = [{"type": "double", "required": True}, {"type": "datetime", "required": True}]
VECTOR = [{"type": "array", "items": {"type": "double"}, "required": True}]  # infer_signature([[1.0, 2.0]])
ROW_SHAPE = "a row of this model's {0} unnamed columns is a list of {0} values in column order, or an object keyed {1}"


@pytest.mark.parametrize("inputs, rows, served", [
    (TEXT, ["ab", {"c0": "c"}], [{"c0": "ab"}, {"c0": "c"}]),
    (PAIR, [[1, "2024-01-01T00:00:00Z"], {"c0": 2.5, "c1": "2024-01-02T00:00:00"}],
     [{"c0": 1.0, "c1": datetime.fromisoformat("2024-01-01T00:00:00+00:00")},
      {"c0": 2.5, "c1": datetime(2024, 1, 2)}]),
    (VECTOR, [[1, 2.5], {"c0": []}], [{"c0": [1.0, 2.5]}, {"c0": []}]),
    (HINTED, [{"role": "user"}, {"c0": {"role": "system", "weight": 2}}],
     [{"c0": {"role": "user"}}, {"c0": {"role": "system", "weight": 2.0}}]),
])
def test_rows_of_unnamed_columns_are_values_or_lists_as_mlflow_serve_takes_them(inputs, rows, served) -> None:
    validated = _request_model(inputs).model_validate_json(json.dumps({"inputs": rows}))
    assert validated.inputs == served


@pytest.mark.parametrize("inputs, rows, expected", [
    (TEXT, [5], _error("inputs[0].c0: Input should be a valid string", "inputs[0].c0")),
    (TEXT, [["a", "b"]], _error("inputs[0]: " + ROW_SHAPE.format(1, "c0"), "inputs[0]")),
    (TEXT, [{"text": "a"}], _error("inputs[0].c0: Field required (and 1 more problems)", "inputs[0].c0")),
    (PAIR, ["a", [1]], _error("inputs[0]: " + ROW_SHAPE.format(2, "c0, c1") + " (and 1 more problems)",
                              "inputs[0]")),
    (PAIR, [[1, "yesterday"]], _error("inputs[0].c1: Input should be a valid datetime", "inputs[0].c1")),
    (PAIR, [[1, 1700000000]], _error("inputs[0].c1: Input should be a valid datetime", "inputs[0].c1")),
    (VECTOR, [[1, "2"]], _error("inputs[0].c0[1]: Input should be a valid number", "inputs[0].c0[1]")),
    (HINTED, [{"role": 3}], _error("inputs[0].c0.role: Input should be a valid string", "inputs[0].c0.role")),
])
def test_a_bad_row_of_unnamed_columns_is_one_400_naming_it(inputs, rows, expected) -> None:
    assert _post({"inputs": rows}, request_model=_request_model(inputs)) == [expected]


class _Lengths(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[str], params=None) -> list[int]:
        return [len(text) for text in model_input]


def test_a_type_hinted_model_answers_bare_values_as_golden_records_keyed_rows(tmp_path) -> None:
    """MLflow 3 logs `list[str]` as one unnamed string column; clients send `{"inputs": ["text"]}`."""
    mlflow.pyfunc.save_model(str(tmp_path / "model"), python_model=_Lengths(), pip_requirements=["mlflow"])
    inputs = json.loads(mlflow.models.Model.load(str(tmp_path / "model")).signature.to_dict()["inputs"])
    assert inputs == TEXT
    golden = pyfunc_answers.answers(str(tmp_path / "model"), inputs, [{"inputs": [{"c0": "ab"}, {"c0": "xyz"}]}],
                                    mf_inputs, here=True)
    predictor = mf_runtime.Predictor(str(tmp_path / "model"), {"signature": {"inputs": inputs},
                                                               "flavor": {"loader": "pyfunc"}})
    validated = _request_model(inputs).model_validate_json('{"inputs": ["ab", "xyz"]}')
    assert [{"outputs": predictor.predict(validated.inputs, None)}] == golden == [{"outputs": [2, 3]}]


PARTLY_OPTIONAL = [{"type": "double", "required": True}, {"type": "string", "required": False}]


@pytest.mark.parametrize("inputs", [TEXT, PAIR, VECTOR, HINTED, PARTLY_OPTIONAL])
def test_the_fuzzer_sends_rows_of_unnamed_columns_both_ways_and_both_serve_alike(inputs) -> None:
    columns, request_model = signature_columns(inputs), _request_model(inputs)
    tensor = [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 2]}}]
    assert unnamed_columns(inputs) and not unnamed_columns(INPUTS) and not unnamed_columns(tensor)
    keyed_and_sent = valid_request(columns, MAX_ROWS).flatmap(
        lambda request: st.tuples(st.just(request), as_clients_send(st.just(request), columns)))

    @DETERMINISTIC
    @given(keyed_and_sent)
    def served_alike(pair: tuple[dict, dict]) -> None:
        keyed, sent = (request_model.model_validate_json(_encode(request)) for request in pair)
        assert sent.inputs == keyed.inputs

    served_alike()
    keyed, sent = find(keyed_and_sent, lambda pair: pair[0] != pair[1])  # the positional form is drawn at all
    assert any(row not in keyed["inputs"] for row in sent["inputs"])
