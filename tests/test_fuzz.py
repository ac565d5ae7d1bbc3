"""factory.fuzz: signature parsing, request strategies checked against an independent validator,
and the runner against a real HTTP server on 127.0.0.1 (correct, and with planted bugs).

Every hypothesis run here is derandomized or seeded, so the suite cannot flake.
"""

from __future__ import annotations

import asyncio
import json
import math
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from factory.errors import ServeError
from factory.fuzz import (Column, fuzz_service, invalid_request, invalid_requests_by_kind, signature_columns,
                          signature_params, valid_request, valid_row)
from factory.fuzz_report import (CheckResult, Failure, FuzzResult, RequestRecord, Response, invalid_problem,
                                 minimal_failure, valid_problem, json_text, junit_error_text,
                                 junit_text)
from fuzz_support.server import LETS_NAN_THROUGH, make_app, parse_rows, request_model, serving

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_BODY = 64 * 1024
SEED = 20240611

# As `mlflow.models.ModelSignature.to_dict()` writes it (mlflow 3.17.2), with names that are not identifiers.
ALL_TYPES = {"inputs": json.dumps([
    {"type": "double", "name": "mean radius", "required": True},
    {"type": "float", "name": "c float", "required": True},
    {"type": "long", "name": "count", "required": True},
    {"type": "integer", "name": "small-count", "required": True},
    {"type": "boolean", "name": "flag", "required": True},
    {"type": "string", "name": "name", "required": True},
    {"type": "datetime", "name": "when", "required": True},
    {"type": "binary", "name": "blob", "required": True},
    {"type": "double", "name": "opt score", "required": False},
    {"type": "string", "name": 'label "ü"', "required": False},
]), "outputs": '[{"type": "double", "required": true}]', "params": None}
IMAGE = {"inputs": '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2, 3]}}]', "outputs": None}
RAGGED = [{"type": "tensor", "tensor-spec": {"dtype": "int8", "shape": [-1, -1]}}]
SCALARS = [{"type": "tensor", "tensor-spec": {"dtype": "bool", "shape": [-1]}}]
SIGNATURES = {"all types": ALL_TYPES, "float32 image": IMAGE, "int8 ragged": RAGGED, "bool scalars": SCALARS}
ROW_KINDS = {"wrong_type", "missing_required", "extra_field", "non_finite", "null_required"}
TENSOR_KINDS = {"wrong_type", "null_required", "wrong_row_shape"}
REQUEST_KINDS = {"empty_inputs", "too_many_rows", "not_json", "wrong_top_level", "oversized_body"}


# --- signature parsing --------------------------------------------------------------------------


def test_parses_every_column_type_and_optional_columns():
    columns = signature_columns(ALL_TYPES)
    assert [c.name for c in columns][:2] == ["mean radius", "c float"]
    assert {c.type for c in columns} == {"double", "float", "long", "integer", "boolean", "string", "datetime",
                                         "binary"}
    assert [c.name for c in columns if not c.required] == ["opt score", 'label "ü"']


def test_an_unnamed_column_is_keyed_as_the_served_frame_names_it():
    """A type-hinted predict(model_input: list[str]) logs one column without a name (MLflow 3)."""
    from factory.runtime import bento_module

    inputs = [{"type": "string", "required": True}]
    assert signature_columns(inputs) == [Column("c0", "string")]
    assert bento_module("mf_inputs").column_names(inputs) == ["c0"]


def test_accepts_the_dict_form_and_the_parsed_inputs_list_alike():
    assert signature_columns(json.loads(ALL_TYPES["inputs"])) == signature_columns(ALL_TYPES)
    assert signature_columns(IMAGE) == [Column(None, "float32", shape=(2, 3))]
    assert signature_columns(SCALARS) == [Column(None, "bool", shape=())]


@pytest.mark.parametrize("signature, message", [
    (None, "the model has no input signature: log it with one (mlflow.models.infer_signature)"),
    ({"inputs": None, "outputs": "[]"}, "the model has no input signature: log it with one "
                                         "(mlflow.models.infer_signature)"),
    ({"inputs": "[]"}, "the model has no input signature: log it with one (mlflow.models.infer_signature)"),
    ({"inputs": "[{"}, "the signature's inputs are not valid JSON: Expecting property name enclosed in double "
                       "quotes: line 1 column 3 (char 2)"),
    ({"inputs": '{"type": "double"}'}, "the signature's inputs must be a list of column or tensor specs"),
    ([{"type": "array", "name": "tags", "items": {"type": "any"}}],
     "input column 'tags' items has unsupported type 'any' (supported: binary, boolean, datetime, double, float, "
     "integer, long, string, array, map, object)"),
    ([{"type": "map", "name": "m", "values": {"type": "array", "items": {"type": "tensor"}}}],
     "input column 'm' values items has unsupported type 'tensor' (supported: binary, boolean, datetime, double, "
     "float, integer, long, string, array, map, object)"),
    ([{"type": "object", "name": "o", "properties": {}}], "input column 'o' is an object without properties"),
    ([{"type": "object", "name": "o", "properties": {"a b": {"type": "object", "properties": {"z": {"type": "x"}}}}}],
     "input column 'o' property 'a b' property 'z' has unsupported type 'x' (supported: binary, boolean, datetime, "
     "double, float, integer, long, string, array, map, object)"),
    ([{"type": "double", "name": "c1"}, {"type": "double"}], "input column 'c1' appears more than once"),
    ([{"type": "double", "name": 7}], "input column 0 has a name that is not a string: 7"),
    ([{"type": "any"}],  # a type-hinted list[Any]
     "input column 0 (unnamed) has unsupported type 'any' (supported: binary, boolean, datetime, double, float, "
     "integer, long, string, array, map, object)"),
    ({"inputs": [{"type": "double", "name": "x"}], "params": '[{"name": "raw", "type": "binary", "default": null}]'},
     "param 'raw' has unsupported type 'binary' with shape None (supported: boolean, datetime, double, float, "
     "integer, long, string, each alone or as a list, shape [-1])"),
    ([{"type": "double", "name": "a"}, {"type": "long", "name": "a"}], "input column 'a' appears more than once"),
    ([{"type": "tensor", "tensor-spec": {"dtype": "object", "shape": [-1]}}],
     "the tensor input has unsupported dtype 'object' (supported: bool, float16, float32, float64, int16, int32, "
     "int64, int8, uint16, uint32, uint64, uint8)"),
    ([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 0]}}],
     "the tensor input has invalid shape [-1, 0]: need a list of dimensions, each -1 or > 0"),
    ([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": []}}],
     "the tensor input has invalid shape []: need a list of dimensions, each -1 or > 0"),
    ([{"type": "tensor", "name": "x", "tensor-spec": {"dtype": "float32", "shape": [-1]}},
      {"type": "tensor", "name": "y", "tensor-spec": {"dtype": "float32", "shape": [-1]}}],
     "the signature has 2 inputs including a tensor: only a single tensor input is supported"),
])
def test_signature_errors_say_what_is_wrong(signature, message):
    with pytest.raises(ServeError) as raised:
        signature_columns(signature)
        signature_params(signature)
    assert str(raised.value) == message


# --- strategies against an independent reference validator --------------------------------------


def _accepted(columns: list[Column], max_batch_size: int, body: bytes) -> bool:
    if len(body) > MAX_BODY:
        return False
    try:
        parse_rows(request_model(columns, max_batch_size), body)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("name", SIGNATURES)
def test_valid_requests_satisfy_the_signature(name):
    columns, max_batch_size = signature_columns(SIGNATURES[name]), 5
    model = request_model(columns, max_batch_size)

    @DETERMINISTIC
    @given(valid_request(columns, max_batch_size))
    def check(request):
        assert 1 <= len(request["inputs"]) <= max_batch_size
        assert len(parse_rows(model, json.dumps(request, allow_nan=False))) == len(request["inputs"])

    check()


@pytest.mark.parametrize("name", SIGNATURES)
def test_invalid_requests_never_satisfy_it_and_name_the_field_at_fault(name):
    columns, max_batch_size = signature_columns(SIGNATURES[name]), 5
    model = request_model(columns, max_batch_size)

    @DETERMINISTIC
    @given(invalid_request(columns, max_batch_size, MAX_BODY))
    def check(example):
        kind, body, field = example
        assert not _accepted(columns, max_batch_size, body), kind
        if field is not None:
            with pytest.raises(ValidationError) as refused:
                parse_rows(model, body)
            assert field in {str(part) for error in refused.value.errors() for part in error["loc"]}, kind

    check()


@pytest.mark.parametrize("name, row_kinds", [("all types", ROW_KINDS), ("int8 ragged", TENSOR_KINDS),
                                             ("float32 image", TENSOR_KINDS | {"non_finite"}),
                                             ("bool scalars", TENSOR_KINDS)])
def test_every_invalid_kind_the_signature_allows_has_a_strategy(name, row_kinds):
    by_kind = invalid_requests_by_kind(signature_columns(SIGNATURES[name]), 3, MAX_BODY)
    assert set(by_kind) == row_kinds | REQUEST_KINDS
    for kind, strategy in by_kind.items():

        @settings(DETERMINISTIC, max_examples=5)
        @given(strategy)
        def labelled(example):
            assert example[0] == kind

        labelled()


def test_non_finite_numbers_are_raw_json_tokens():
    columns = [Column("x", "double")]

    @DETERMINISTIC
    @given(invalid_requests_by_kind(columns, 1)["non_finite"])
    def check(example):
        assert example[1] in (b'{"inputs": [{"x": NaN}]}', b'{"inputs": [{"x": Infinity}]}',
                              b'{"inputs": [{"x": -Infinity}]}')

    check()


def test_full_batches_are_generated_even_for_large_batch_sizes():
    sizes = set()

    @DETERMINISTIC
    @given(valid_request(signature_columns(ALL_TYPES), 64))
    def collect(request):
        sizes.add(len(request["inputs"]))

    collect()
    assert {1, 64} <= sizes


def test_a_row_draws_every_required_column():
    @DETERMINISTIC
    @given(valid_row(signature_columns(ALL_TYPES)))
    def check(row):
        assert {"mean radius", "c float", "count", "small-count", "flag", "name", "when", "blob"} <= set(row)

    check()


# --- verdicts on single responses ---------------------------------------------------------------


@pytest.mark.parametrize("status, body, problem", [
    (200, b"[1.5, 2]", None),
    (200, b"[1.5]", "expected a JSON list of 2 outputs, got [1.5]"),
    (200, b"[NaN, 1.0]", "200 with a body that is not JSON: NaN is not JSON"),
    (200, b'[1.0, "a"]', "outputs are not of one JSON type: number, string"),
    (200, b"[null, 1.0]", None),  # null: a non-finite prediction, which JSON cannot carry
    (500, b"{}", "expected 200, got 500"),
    (None, b"", "no response within 1 s"),
])
def test_valid_response_verdicts(status, body, problem):
    assert valid_problem(Response(status, body, 1.0, "no response within 1 s"), 2, set()) == problem


def test_valid_responses_must_keep_the_json_type_of_the_first():
    kinds: set[str] = set()
    assert valid_problem(Response(200, b"[true]", 1.0), 1, kinds) is None
    assert valid_problem(Response(200, b"[1]", 1.0), 1, kinds) == "outputs are not of one JSON type: boolean, number"


WRONG_TYPE_BODY = b'{"inputs": [{"mean radius": "1"}]}'


@pytest.mark.parametrize("status, response, request_body, problem", [
    (422, b'{"detail": [{"loc": ["inputs", 0, "mean radius"]}]}', WRONG_TYPE_BODY, None),
    (422, b'{"detail": "bad"}', WRONG_TYPE_BODY, "422 body does not name the field 'mean radius'"),
    (400, b"bad", WRONG_TYPE_BODY, "400 without a JSON body naming 'mean radius'"),
    (413, b"too big", WRONG_TYPE_BODY, None),
    (400, b"bad", b'{"inputs": [{"mean radius": NaN}]}', None),
    (500, b"{}", WRONG_TYPE_BODY, "expected a 4xx, got 500"),
    (200, b"[1]", WRONG_TYPE_BODY, "expected a 4xx, got 200"),
])
def test_invalid_response_verdicts(status, response, request_body, problem):
    assert invalid_problem(Response(status, response, 1.0), request_body, "mean radius") == problem


@pytest.mark.parametrize("field, response, problem", [
    # A key a JSON path must escape is named in its escaped form, as the served API writes the path.
    ("\x1f", b'{"error": {"field": "inputs[0][\\"\\u001f\\"]"}}', None),
    ('say "hi"', b'{"error": {"field": "inputs[0][\\"say \\\\\\"hi\\\\\\"\\"]"}}', None),
    ("größe", b'{"error": {"message": "inputs[0].gr\\u00f6\\u00dfe: Field required"}}', None),
    ("\x1f", b'{"error": {"field": "inputs[0]"}}', "400 body does not name the field '\\x1f'"),
])
def test_a_field_is_named_as_sent_or_as_its_json_path_writes_it(field, response, problem):
    body = json.dumps({"inputs": [{field: 1}]}).encode()
    assert invalid_problem(Response(400, response, 1.0), body, field) == problem


# --- the runner against a real server -----------------------------------------------------------


@pytest.mark.parametrize("catalog, rerun", [
    (None, "factory test m --seed 7"),
    ("/tmp/a b/models.yaml", "factory test -f '/tmp/a b/models.yaml' m --seed 7"),
])
def test_the_rerun_line_names_the_catalog_the_model_came_from(tmp_path, catalog, rerun):
    failure = minimal_failure(tmp_path, "m", 7, "http://127.0.0.1:1", "valid", kind="valid", field=None,
                              reason="expected 200, got 500", body=b"{}", response=Response(500, b"", 1.0),
                              catalog=catalog)
    assert failure.replay_factory == rerun


def _fuzz(url: str, signature, tmp_path: Path, **overrides) -> FuzzResult:
    options = dict(seed=SEED, valid_examples=40, invalid_examples=80, timeout_s=5.0, model="breast_cancer",
                   report_dir=tmp_path / "report", max_body_bytes=MAX_BODY)
    return fuzz_service(url, signature, 4, **{**options, **overrides})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


async def crash_on_negative_numbers(row):
    if any(_is_number(value) and value < 0 for value in row.values()):
        raise ValueError("the model cannot take negative values")


async def crash_on_nan(row):
    if any(_is_number(value) and math.isnan(value) for value in row.values()):
        raise ValueError("Input contains NaN")


async def hang_when_flag_is_set(row):
    if row["flag"]:
        await asyncio.sleep(30)


def _row(**values):
    base = {"mean radius": 1.5, "c float": 2, "count": 3, "small-count": 4, "flag": True, "name": "x",
            "when": "2024-01-01T00:00:00", "blob": "AA=="}
    return {**base, **values}


def test_a_correct_server_passes_and_the_reports_say_so(tmp_path):
    golden = [{"inputs": [_row(), _row(**{"opt score": 0.5})], "outputs": [8.0, 9.0000001]}]
    with serving(make_app(signature_columns(ALL_TYPES), 4, max_body_bytes=MAX_BODY)) as url:
        result = _fuzz(url, ALL_TYPES, tmp_path, golden=golden)

    assert result.passed, result.failures
    assert [(c.name, c.requests > 0) for c in result.checks] == [
        ("valid requests", True), ("invalid requests", True), ("golden", True)]
    assert result.requests_fuzzed == sum(c.requests for c in result.checks) and result.failed_requests == 0
    assert {r.kind for r in result.records} == {"valid", "golden"} | ROW_KINDS | REQUEST_KINDS
    assert 0 < result.latency_ms(50) <= result.latency_ms(99)
    assert not (tmp_path / "report").exists()  # nothing to replay

    suite = ET.fromstring(junit_text([result])).find("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == ("breast_cancer", "3", "0")
    assert json.loads(json_text(result))["requests_fuzzed"] == result.requests_fuzzed


def test_a_full_batch_larger_than_the_body_limit_is_sent_as_many_rows_as_fit(tmp_path):
    """max_batch_size 10,000 is a valid batcher size for small requests merged; one request of 10,000 rows of this
    signature is over the body limit, and the server's 413 for it says nothing about the model."""
    with serving(make_app(signature_columns(ALL_TYPES), 10_000, max_body_bytes=MAX_BODY)) as url:
        result = fuzz_service(url, ALL_TYPES, 10_000, seed=SEED, valid_examples=15, invalid_examples=0,
                              model="breast_cancer", report_dir=tmp_path / "report", max_body_bytes=MAX_BODY)
    assert result.passed, result.failures
    assert {r.status for r in result.records} == {200}


@pytest.mark.parametrize("rows, limit, kept", [
    (3, 1000, 3),  # fits: unchanged
    (1000, 1000, 38),  # 1,000 rows of 26 bytes each: 38 fit in exactly 1,000 bytes, 39 would not
    (2, 10, 1),  # one row over the limit stays: the request must carry a row
])
def test_a_request_keeps_as_many_rows_as_fit_in_the_body_limit(rows, limit, kept):
    from factory.fuzz_requests import encode, within_body_limit

    request = {"inputs": [{"x": 1.5, "name": "ab"}] * rows}
    fitted = within_body_limit(request, limit)
    assert len(fitted["inputs"]) == kept
    assert kept == 1 or len(encode(fitted)) <= limit


@pytest.mark.parametrize("name", ["float32 image", "int8 ragged", "bool scalars"])
def test_tensor_signatures_pass_against_a_correct_server(tmp_path, name):
    columns = signature_columns(SIGNATURES[name])
    with serving(make_app(columns, 4, max_body_bytes=MAX_BODY)) as url:
        result = _fuzz(url, SIGNATURES[name], tmp_path, valid_examples=30, invalid_examples=50)
    assert result.passed, result.failures


def test_a_planted_crash_is_reported_with_the_minimal_request_and_its_replay(tmp_path):
    app = make_app(signature_columns(ALL_TYPES), 4, max_body_bytes=MAX_BODY, on_row=crash_on_negative_numbers)
    with serving(app) as url:
        result = _fuzz(url, ALL_TYPES, tmp_path)
        failure = result.checks[0].failure
        assert failure is not None and not result.passed
        # Shrunk: one row, all required columns at their simplest, one number at -1.
        rows = json.loads(Path(failure.body_file).read_bytes())["inputs"]
        assert len(rows) == 1 and set(rows[0]) == set(_row())
        assert sorted(value for value in rows[0].values() if _is_number(value)) == [-1, 0, 0, 0]
        assert (failure.kind, failure.status, failure.reason) == ("valid", 500, "expected 200, got 500")
        assert failure.request_excerpt == Path(failure.body_file).read_text()
        assert failure.replay_factory == f"factory test breast_cancer --seed {SEED}"
        assert shlex.split(failure.replay_curl) == [
            "curl", "-sS", "-X", "POST", f"{url}/predict", "-H", "Content-Type: application/json",
            "--data-binary", f"@{failure.body_file}"]
        if shutil.which("curl"):
            replayed = subprocess.run(shlex.split(failure.replay_curl), capture_output=True, timeout=10, check=True)
            assert b"negative" in replayed.stdout

    case = ET.fromstring(junit_text([result])).find("testsuite/testcase[@name='valid requests']")
    assert case.find("failure").get("message") == "expected 200, got 500"
    assert failure.replay_curl in case.find("failure").text and failure.request_excerpt in case.find("failure").text


def test_the_same_seed_finds_the_same_minimal_request(tmp_path):
    app = make_app(signature_columns(ALL_TYPES), 4, max_body_bytes=MAX_BODY, on_row=crash_on_negative_numbers)
    with serving(app) as url:
        first = _fuzz(url, ALL_TYPES, tmp_path / "a", invalid_examples=0).checks[0].failure
        second = _fuzz(url, ALL_TYPES, tmp_path / "b", invalid_examples=0).checks[0].failure
    assert first.request_excerpt == second.request_excerpt


def test_a_5xx_on_an_invalid_request_is_a_failure(tmp_path):
    app = make_app(signature_columns(ALL_TYPES), 4, max_body_bytes=MAX_BODY, on_row=crash_on_nan,
                   config=LETS_NAN_THROUGH)
    with serving(app) as url:
        result = _fuzz(url, ALL_TYPES, tmp_path, valid_examples=10)
    failure = result.checks[1].failure
    assert (failure.kind, failure.status, failure.reason) == ("non_finite", 500, "expected a 4xx, got 500")
    assert json.loads(Path(failure.body_file).read_bytes().replace(b"NaN", b"null"))["inputs"] == [
        {**dict.fromkeys(["mean radius", "c float", "count", "small-count"], 0), failure.field: None,
         "flag": False, "name": "", "when": "2000-01-01T00:00:00", "blob": ""}]
    assert b"NaN" in Path(failure.body_file).read_bytes()


def test_a_hang_is_a_failure_and_later_checks_are_skipped_not_waited_out(tmp_path):
    signature = [{"type": "boolean", "name": "flag"}]
    app = make_app(signature_columns(signature), 4, max_body_bytes=MAX_BODY, on_row=hang_when_flag_is_set)
    golden = [{"inputs": [{"flag": False}], "outputs": [1.0]}]
    with serving(app) as url:
        result = _fuzz(url, signature, tmp_path, valid_examples=10, invalid_examples=20, timeout_s=0.3, golden=golden)
    failure = result.checks[0].failure
    assert (failure.status, failure.reason) == (None, "no response within 0.3 s")
    # Kept as found rather than shrunk: each shrink step would wait out the timeout again.
    assert {"flag": True} in json.loads(Path(failure.body_file).read_bytes())["inputs"]
    assert [record.status for record in result.records].count(None) == 1
    stopped = "the service stopped answering"
    assert [check.skipped for check in result.checks] == [None, stopped, stopped]


def test_golden_outputs_must_match(tmp_path):
    golden = [{"inputs": [_row()], "outputs": [8.0]}, {"inputs": [_row(), _row()], "outputs": [8.0, 8.1]}]
    with serving(make_app(signature_columns(ALL_TYPES), 4, max_body_bytes=MAX_BODY)) as url:
        result = _fuzz(url, ALL_TYPES, tmp_path, valid_examples=0, invalid_examples=0, golden=golden)
    check = result.checks[2]
    # The mismatch is asked once more: a model that answers it the same way is wrong, not nondeterministic.
    assert (check.requests, check.failure.kind, check.failure.reason) == (3, "golden", "output 1 is 8.0, golden 8.1")
    assert json.loads(Path(check.failure.body_file).read_bytes()) == {"inputs": golden[1]["inputs"]}


def test_a_model_answering_the_same_request_differently_is_called_nondeterministic(tmp_path):
    """Prophet samples yhat_lower/yhat_upper on every call: no golden answer can hold, and the fix is the model's."""
    answers = iter([8.0, 8.25, 8.5])
    golden = [{"inputs": [_row()], "outputs": [8.0]}, {"inputs": [_row()], "outputs": [8.0]}]
    with serving(make_app(signature_columns(ALL_TYPES), 4, max_body_bytes=MAX_BODY, answer=lambda row: next(answers))) \
            as url:
        result = _fuzz(url, ALL_TYPES, tmp_path, valid_examples=0, invalid_examples=0, golden=golden)
    check = result.checks[2]
    assert (check.requests, check.failure.kind, check.failure.reason) == (3, "golden", (
        "the model answered the same request differently twice (output 0 was 8.25, then 8.5): it is "
        "nondeterministic (it samples at predict time, as Prophet does for yhat_lower/yhat_upper), so no golden "
        "prediction can hold; make its predict deterministic: seed its random generator inside predict (e.g. "
        "np.random.seed(0)), or log it without the sampled outputs (Prophet: uncertainty_samples=0)"))
    assert check.failure.response_excerpt == "[8.25]"


def test_malformed_golden_examples_are_refused_before_any_request(tmp_path):
    with pytest.raises(ServeError, match="golden example 0 needs non-empty 'inputs' and 'outputs' lists"):
        _fuzz("http://127.0.0.1:9", ALL_TYPES, tmp_path, golden=[{"inputs": [_row()], "outputs": []}])


# --- report files -------------------------------------------------------------------------------


def _nasty_result() -> FuzzResult:
    nasty = 'x\x00y\x1b]]></failure><a href="&amp;">\ufffe\ud800 "quoted" \'single\''
    failure = Failure(kind="wrong_type", field=nasty, reason=f"422 body does not name {nasty}", status=422,
                      request_excerpt=nasty, response_excerpt=nasty, body_file="/tmp/a b/x.json",
                      replay_curl="curl ... '@/tmp/a b/x.json'", replay_factory="factory test m --seed 1")
    checks = [CheckResult("valid requests", 2), CheckResult("invalid requests", 1, failure),
              CheckResult("golden", 0, skipped="no golden examples given")]
    records = [RequestRecord("valid", 200, 1.0, True), RequestRecord("valid", 200, 3.0, True),
               RequestRecord("wrong_type", 422, 2.0, False)]
    return FuzzResult(model=f"m{nasty}", base_url="http://127.0.0.1:1", seed=1, checks=checks, records=records)


def test_junit_escapes_everything_and_stays_well_formed():
    root = ET.fromstring(junit_text([_nasty_result()]))
    failure = root.find("testsuite/testcase[@name='invalid requests']/failure")
    assert failure.get("type") == "wrong_type"
    assert "]]></failure>" in failure.text and "\\u0000" in failure.text and "\\ud800" in failure.text
    assert root.find("testsuite/testcase[@name='golden']/skipped").get("message") == "no golden examples given"
    assert (root.get("tests"), root.get("failures")) == ("3", "1")


def test_json_report_is_deterministic_with_sorted_keys():
    text = json_text(_nasty_result())
    assert text == json_text(_nasty_result())
    document = json.loads(text)
    assert list(document) == sorted(document)
    assert (document["latency_p50_ms"], document["latency_p99_ms"], document["failed_requests"]) == (2.0, 3.0, 1)


def test_the_junit_of_a_model_that_never_answered_says_why():
    root = ET.fromstring(junit_error_text("m", "not built\nrun `factory build m`"))
    error = root.find("testsuite[@name='m']/testcase[@name='serve']/error")
    assert (root.get("errors"), error.get("message"), error.text) == ("1", "not built",
                                                                     "not built\nrun `factory build m`")
