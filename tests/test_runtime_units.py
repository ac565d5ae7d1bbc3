"""The Bento runtime in process: dependency merging, batch bisection, non-finite outputs, one error shape."""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

from factory.runtime import BENTO_TEMPLATES, PYCACHE, interpreter_environment, lock_pins, resolve_requirements

sys.path.insert(0, str(BENTO_TEMPLATES))
import mf_flavors  # noqa: E402
import mf_http  # noqa: E402
import mf_inputs  # noqa: E402
import mf_runtime  # noqa: E402
import mf_schema  # noqa: E402

WHERE = "models.yaml:3: model 'm'"
PINS = lock_pins()


def _resolve(model: list[str], runtime=("scikit-learn",), packages=(), native=True) -> tuple[str, ...]:
    return resolve_requirements([Requirement(line) for line in model], runtime, packages, native, WHERE)


def test_model_requirements_merge_with_runtime_pins() -> None:
    resolved = _resolve([f"scikit-learn=={PINS['scikit-learn']}", "mlflow==3.17.2", "sortedcontainers>=2",
                         "tabulate==0.9.0"])
    assert f"scikit-learn=={PINS['scikit-learn']}" in resolved and f"bentoml=={PINS['bentoml']}" in resolved
    assert f"sortedcontainers=={PINS['sortedcontainers']}" in resolved  # compatible: the lock's version
    assert "tabulate==0.9.0" in resolved  # not in the lock: the model's own pin
    assert not any(line.startswith("mlflow") for line in resolved)  # native loader: no mlflow
    assert any(line.startswith("mlflow==") for line in _resolve(["mlflow==3.17.2"], ("mlflow",), native=False))
    assert resolved == tuple(sorted(resolved))


def test_catalog_packages_override_by_name() -> None:
    resolved = _resolve(["scikit-learn==1.0.2"], packages=["scikit-learn==1.0.2", "tabulate>=0.9"])
    assert "scikit-learn==1.0.2" in resolved and "tabulate>=0.9" in resolved


@pytest.mark.parametrize("recorded, gpu, served", [
    ("xgboost==3.2.0", False, f"xgboost-cpu=={PINS['xgboost-cpu']}"),
    ("xgboost>=2", False, f"xgboost-cpu=={PINS['xgboost-cpu']}"),  # the lock's version, as for any package
    ("xgboost~=3.1.0", False, "xgboost-cpu~=3.1.0"),
    ("xgboost==2.0.3", False, "xgboost==2.0.3"),  # no CPU build before 2.1.0: kept
    ("xgboost<2.1", False, "xgboost<2.1"),
    ("xgboost==3.2.0", True, "xgboost==3.2.0"),  # a GPU model keeps the CUDA build
])
def test_xgboost_is_served_with_its_cpu_build_unless_the_model_has_a_gpu(recorded, gpu, served) -> None:
    resolved = resolve_requirements([Requirement(recorded)], ("scikit-learn",), (), True, WHERE, gpu=gpu)
    assert [line for line in resolved if line.startswith("xgboost")] == [served]


def test_a_catalog_override_of_xgboost_replaces_the_cpu_build() -> None:
    resolved = _resolve(["xgboost==3.2.0"], packages=["xgboost==3.1.0"])
    assert [line for line in resolved if line.startswith("xgboost")] == ["xgboost==3.1.0"]


_CELLS = {"double": st.floats(allow_nan=False, allow_infinity=False), "float": st.floats(-1e6, 1e6, width=32),
          "long": st.integers(-(2**63), 2**63 - 1), "integer": st.integers(-(2**31), 2**31 - 1),
          "boolean": st.booleans(), "string": st.text(max_size=5), "binary": st.sampled_from(["", "AAE=", "aGk="]),
          "datetime": st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc))}


@st.composite
def _signature_and_rows(draw) -> tuple[list[dict], list[dict]]:
    kinds = draw(st.lists(st.sampled_from(sorted(_CELLS)), min_size=1, max_size=5))
    inputs = [{"type": kind, "name": f"c {index}", "required": draw(st.booleans())} for index, kind in enumerate(kinds)]
    row = st.fixed_dictionaries({spec["name"]: _CELLS[spec["type"]] if spec["required"] else
                                 st.none() | _CELLS[spec["type"]] for spec in inputs})
    return inputs, draw(st.lists(row, min_size=1, max_size=6))


def _frame_from_rows(rows: list[dict], inputs: list[dict]):
    """The construction frame() replaced (rows first, dtypes cast afterwards): the frames must be equal."""
    import pandas as pd

    names = mf_inputs.column_names(inputs)
    data = pd.DataFrame([[mf_inputs._cell(row.get(name), spec["type"]) for name, spec in zip(names, inputs)]
                         for row in rows], columns=names)
    for name, spec in zip(names, inputs):
        if spec["type"] in mf_inputs.INTEGERS and not spec["required"] and data[name].isna().all():
            data = data.drop(columns=[name])
        elif spec["type"] in ("double", "float") or (spec["type"] in mf_inputs.FRAME_DTYPES and data[name].notna().all()):
            data[name] = data[name].astype(mf_inputs.FRAME_DTYPES[spec["type"]])
        elif spec["type"] == "datetime":
            data[name] = pd.to_datetime(data[name], utc=True).dt.tz_localize(None)
    return data


def test_datetimes_reach_the_model_as_mlflow_types_them() -> None:
    """MLflow's datetime is datetime64 without a zone (its schema check refuses object columns): aware values in
    UTC, naive ones as they are, missing ones NaT; the ISO strings a request carries give the same column as
    the datetimes validation makes of them."""
    import pandas as pd

    inputs = [{"type": "datetime", "name": "when", "required": False}]
    sent = ["2026-03-01T12:30:00+02:00", "2026-03-01T12:30:00", None, "2026-03-01T12:30:00.000001Z"]
    validated = [None if text is None else datetime.datetime.fromisoformat(text) for text in sent]
    frames = [mf_inputs.frame([{"when": value} for value in values], inputs) for values in (sent, validated)]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert str(frames[0]["when"].dtype).startswith("datetime64")
    assert [str(value) for value in frames[0]["when"]] == ["2026-03-01 10:30:00", "2026-03-01 12:30:00", "NaT",
                                                           "2026-03-01 12:30:00.000001"]


@settings(deadline=None, max_examples=80)
@given(_signature_and_rows())
def test_frames_keep_the_signature_dtypes_and_values(case) -> None:
    import pandas as pd

    inputs, rows = case
    # Names compared, not the Index class: a frame left with no column has an empty, untyped one.
    pd.testing.assert_frame_equal(mf_inputs.frame(rows, inputs), _frame_from_rows(rows, inputs), check_column_type=False)


def test_an_optional_integer_column_no_row_has_is_left_out_as_mlflow_serve_leaves_it_out() -> None:
    """MLflow's schema enforcement refuses a missing value in an integer column, but takes its absence:
    a request without the column is answered, as `mlflow models serve` answers it; a batch mixing rows
    with and without it raises (the Predictor then runs its rows apart)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models.utils import _enforce_schema
    from mlflow.types import Schema

    inputs = [{"type": "long", "name": "count", "required": False}, {"type": "boolean", "name": "flag", "required": True}]
    schema = Schema.from_json(json.dumps(inputs))
    alone = _enforce_schema(mf_inputs.frame([{"count": None, "flag": True}], inputs), schema)
    assert list(alone.columns) == ["flag"]
    assert _enforce_schema(mf_inputs.frame([{"count": 3, "flag": True}], inputs), schema)["count"].tolist() == [3]
    with pytest.raises(MlflowException, match="missing values"):
        _enforce_schema(mf_inputs.frame([{"count": None, "flag": True}, {"count": 3, "flag": False}], inputs), schema)


def _predictor(predict, allow_non_finite=False) -> mf_runtime.Predictor:
    predictor = mf_runtime.Predictor.__new__(mf_runtime.Predictor)
    predictor.inputs = [{"type": "double", "name": "x", "required": True}]
    predictor.tensor = False
    predictor.allow_non_finite = allow_non_finite
    predictor.model = mf_flavors.LoadedModel(predict, "array")
    return predictor


class _Calls:
    def __init__(self, answer):
        self.batches: list[int] = []
        self.answer = answer

    def __call__(self, batch):
        self.batches.append(len(batch))
        return self.answer(batch)


def _rows(values: list[float]) -> list:
    row = mf_schema.row_model([{"type": "double", "name": "x", "required": True}])
    return [row(x=value) for value in values]


def _raising_on_negative(batch):
    if (batch[:, 0] < 0).any():
        raise ValueError("negative")
    return batch[:, 0] * 2


@settings(deadline=None, max_examples=40)
@given(st.lists(st.sampled_from([-1.0, 1.0, 2.0, 3.0]), min_size=1, max_size=32))
def test_only_the_rows_that_raise_fail(values: list[float]) -> None:
    outputs = _predictor(_raising_on_negative).predict(_rows(values))
    for value, output in zip(values, outputs):
        if value < 0:
            assert output[mf_http.FAILURE_MARK.decode()]["code"] == "model_error"
        else:
            assert output == value * 2


def test_a_batch_that_does_not_raise_runs_once() -> None:
    calls = _Calls(_raising_on_negative)
    assert _predictor(calls).predict(_rows([1.0] * 32)) == [2.0] * 32
    assert calls.batches == [32]


def test_non_finite_outputs_fail_their_row_unless_allowed() -> None:
    def log(batch):
        return [math.log(x) if x > 0 else math.nan for x in batch[:, 0]]

    outputs = _predictor(log).predict(_rows([1.0, -1.0]))
    assert outputs[0] == 0.0 and outputs[1][mf_http.FAILURE_MARK.decode()]["code"] == "non_finite_output"
    assert _predictor(log, allow_non_finite=True).predict(_rows([1.0, -1.0])) == [0.0, None]


@pytest.mark.parametrize("loc, path", [
    (["inputs", 0, "distance_km"], "inputs[0].distance_km"),
    (["inputs", 3, "surge multiplier"], 'inputs[3]["surge multiplier"]'),
    (["inputs"], "inputs"),
    ([], "$"),
])
def test_json_paths(loc: list, path: str) -> None:
    assert mf_http.json_path(loc) == path


@pytest.mark.parametrize("error, message", [
    ({"type": "missing", "loc": ["inputs"], "msg": "Field required"}, "inputs: Field required" + mf_http.ENVELOPE_HINT),
    ({"type": "model_type", "loc": [], "msg": "Input should be an object"},
     "Input should be an object" + mf_http.ENVELOPE_HINT),
    ({"type": "list_type", "loc": ["inputs"], "msg": "Input should be a valid array"},
     "inputs: Input should be a valid array" + mf_http.ENVELOPE_HINT),
    # A row's own problem is the row's: no word about the body's shape.
    ({"type": "missing", "loc": ["inputs", 0, "distance_km"], "msg": "Field required"},
     "inputs[0].distance_km: Field required"),
    ({"type": "too_short", "loc": ["inputs"], "msg": "List should have at least 1 item after validation, not 0"},
     "inputs: List should have at least 1 item after validation, not 0"),
])
def test_a_body_of_the_wrong_shape_is_told_the_right_one(error: dict, message: str) -> None:
    assert json.loads(mf_http._validation([error]))["error"]["message"] == message


def test_bentoml_errors_are_rewritten_into_one_shape() -> None:
    validation = json.dumps({"error": "1 validation error", "detail": [
        {"type": "missing", "loc": ["inputs", 2, "surge multiplier"], "msg": "Field required"}]}).encode()
    status, body, headers = mf_http._rewrite(400, validation)
    assert (status, json.loads(body), headers) == (400, {"error": {
        "code": "invalid_input", "message": 'inputs[2]["surge multiplier"]: Field required',
        "field": 'inputs[2]["surge multiplier"]'}}, [])
    status, body, headers = mf_http._rewrite(503, b'{"error": "An unexpected error has occurred"}')
    assert status == 503 and json.loads(body)["error"]["code"] == "overloaded" and headers == [(b"retry-after", b"1")]
    failed = json.dumps([1.0, mf_runtime.failure("model_error", "boom")]).encode()
    assert mf_http._rewrite(200, failed)[:2] == (500, mf_http.error_body("model_error", "boom", "inputs[1]"))
    assert mf_http._rewrite(200, b"[1.0, 2.0]") is None


@pytest.mark.parametrize("body, error", [
    ('{"when": "2026-03-01T12:30:00+02:00"}', None),
    ('{"when": "2026-03-01T12:30:00"}', None),
    ('{"when": 1700000000}', "datetime_type"),  # lax pydantic would read a Unix time
    ('{"when": "2021-02-30T00:00:00"}', "datetime_parsing"),
    ('{"when": "not a date"}', "datetime_parsing"),
])
def test_datetime_columns_take_iso_strings_only(body: str, error: str) -> None:
    from pydantic import TypeAdapter, ValidationError

    row = TypeAdapter(mf_schema.row_model([{"type": "datetime", "name": "when", "required": True}]))
    if error is None:
        assert row.validate_json(body)["when"].year == 2026
        return
    with pytest.raises(ValidationError) as raised:
        row.validate_json(body)
    assert raised.value.errors()[0]["type"] == error


def test_a_dataframe_of_predictions_answers_named_records_as_mlflow_serve_does() -> None:
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"label": ["hi", "lo"], "score": [0.5, np.nan]})
    records = mf_inputs.as_outputs(frame)
    assert records[0] == {"label": "hi", "score": 0.5} and records[1]["label"] == "lo"
    assert type(records[1]["score"]) is float and math.isnan(records[1]["score"])  # native, for json.dumps
    assert [mf_inputs.all_finite(row) for row in records] == [True, False]
    assert mf_inputs.nulled(mf_inputs.as_outputs(frame)) == [{"label": "hi", "score": 0.5}, {"label": "lo", "score": None}]
    assert mf_inputs.as_outputs(pd.Series([1, 2])) == [1, 2]
    assert mf_inputs.as_outputs(np.array([[0.25, 0.75]])) == [[0.25, 0.75]]


def test_predictions_known_finite_at_once_are_numeric_arrays_without_nan_or_infinity() -> None:
    import numpy as np
    import pandas as pd

    known = [np.array([[0.25, 0.75]]), np.array([1, 2]), np.array([True]), np.zeros((0, 2))]
    checked_by_row = [np.array([0.5, np.nan]), np.array([np.inf]), np.array(["a"], dtype=object),
                      pd.DataFrame({"score": [0.5]}), [0.5], {"p": np.array([0.5])}, np.array([1 + 2j])]
    assert [mf_inputs.known_finite(value) for value in known] == [True] * len(known)
    assert [mf_inputs.known_finite(value) for value in checked_by_row] == [False] * len(checked_by_row)


def test_datetimes_in_predictions_answer_iso_strings_as_mlflow_serve_encodes_them() -> None:
    """A Prophet forecast is a frame with a `ds` datetime column; json.dumps refused its Timestamps."""
    import numpy as np
    import pandas as pd
    from mlflow.utils.proto_json_utils import NumpyEncoder

    forecast = pd.DataFrame({"ds": pd.to_datetime(["2024-04-30 00:00:00", "2024-05-01 06:30:00"]), "yhat": [1.5, 2.0],
                             "at": pd.to_datetime(["2024-01-01T00:00:00Z", None], utc=True)})
    records = mf_inputs.as_outputs(forecast)
    assert json.loads(json.dumps(records)) == [
        {"ds": "2024-04-30T00:00:00", "yhat": 1.5, "at": "2024-01-01T00:00:00+00:00"},
        {"ds": "2024-05-01T06:30:00", "yhat": 2.0, "at": None}]
    mlflow_serve = json.loads(json.dumps(forecast.iloc[:1].to_dict(orient="records"), cls=NumpyEncoder))
    assert records[:1] == mlflow_serve
    assert forecast["ds"].dtype.kind == "M"  # the model's own frame is left as it was
    stamps = np.array(["2024-04-30T00:00:00"], dtype="datetime64[s]")
    assert mf_inputs.as_outputs(stamps) == ["2024-04-30T00:00:00"]
    assert mf_inputs.as_outputs({"when": stamps}) == [{"when": "2024-04-30T00:00:00"}]


def test_a_dict_of_named_arrays_answers_one_record_per_row() -> None:
    """What an `mlflow.onnx` model's pyfunc predicts: {output name: array}; json.dumps refused the arrays."""
    import numpy as np

    predictions = {"variable": np.array([[1.5], [2.5]], dtype=np.float32), "label": np.array([0, 1])}
    records = mf_inputs.as_outputs(predictions)
    assert records == [{"label": 0, "variable": [1.5]}, {"label": 1, "variable": [2.5]}]
    assert json.dumps(records) and list(records[0]) == ["label", "variable"]


TRANSFORMER = """
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

class LogFeatures(BaseEstimator, TransformerMixin):
    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.log(np.asarray(X, dtype="float64"))
"""

def test_a_native_sklearn_model_imports_its_custom_classes_from_its_code_paths(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline with a transformer from code_paths: pyfunc puts them on sys.path, the native loader must too."""
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    import yaml
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    from factory.registry import _flavor

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "sweep_log_features.py").write_text(TRANSFORMER)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    from sweep_log_features import LogFeatures

    frame = pd.DataFrame({"p": np.linspace(1.0, 100.0, 20)})
    model = make_pipeline(LogFeatures(), LinearRegression()).fit(frame, np.log(frame["p"]))
    mlflow.sklearn.save_model(model, str(tmp_path / "model"), serialization_format="skops",
                              code_paths=[str(tmp_path / "src" / "sweep_log_features.py")],
                              skops_trusted_types=["sweep_log_features.LogFeatures"], pip_requirements=["scikit-learn"])
    flavor = _flavor(yaml.safe_load((tmp_path / "model" / "MLmodel").read_text())["flavors"], {"inputs": []})
    assert (flavor["loader"], flavor["code"]) == ("skops", "code")
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(tmp_path / "src")])
    monkeypatch.delitem(sys.modules, "sweep_log_features")  # as in a fresh serving process
    loaded = mf_flavors.load(tmp_path / "model", flavor)  # the module only under the model's code/
    assert loaded.predict(pd.DataFrame({"p": [1.0, 10.0]})).tolist() == pytest.approx([0.0, math.log(10.0)], abs=1e-9)
    assert sys.modules["sweep_log_features"].__file__ == str(tmp_path / "model" / "code" / "sweep_log_features.py")


def test_rows_answered_with_nan_fail_alone_when_outputs_are_records() -> None:
    import pandas as pd

    predictor = _predictor(lambda batch: pd.DataFrame({"score": 1.0 / (batch[:, 0] - 1.0)}))
    outputs = predictor.predict(_rows([2.0, 1.0]))
    assert outputs[0] == {"score": 1.0}
    assert outputs[1][mf_http.FAILURE_MARK.decode()]["code"] == "non_finite_output"


@pytest.mark.parametrize("serving_venv", [True, False])
def test_bytecode_of_a_bentos_files_never_lands_beside_them(tmp_path: Path, monkeypatch, serving_venv: bool) -> None:
    """A serving venv caches what its servers import in its own folder; any other interpreter writes nothing."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # as `make` exports it: the serving venv's cache overrides it
    home, bento = tmp_path / "venv", tmp_path / "bento"
    (home / "bin").mkdir(parents=True)
    bento.mkdir()
    (home / "bin" / "python").symlink_to(sys.executable)
    if serving_venv:
        (home / ".complete").write_text("", encoding="utf-8")
    (bento / "mf_probe.py").write_text("ANSWER = 42\n", encoding="utf-8")
    environment = interpreter_environment(home / "bin" / "python")
    subprocess.run([str(home / "bin" / "python"), "-c", "import mf_probe"], cwd=bento, env=environment, check=True)
    assert not list(bento.rglob("*.pyc")) and os.listdir(bento) == ["mf_probe.py"]
    cached = {path.name for path in (home / PYCACHE).rglob("*.pyc")}
    assert (f"mf_probe.{sys.implementation.cache_tag}.pyc" in cached) is serving_venv and (serving_venv or not cached)
    assert ("PYTHONDONTWRITEBYTECODE" in environment) is not serving_venv


def test_a_serving_venv_that_uv_cannot_cache_for_names_the_variable_that_fixes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user whose HOME is read-only (session 10: `factory test` as a non-root user) got uv's own line only;
    uv's cache defaults to $HOME/.cache/uv. (A HOME below a file: unwritable even for root.)"""
    from factory import runtime
    from factory.errors import ServeError

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "file" / "home"))
    for name in ("UV_CACHE_DIR", "XDG_CACHE_HOME", "UV_NO_CACHE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ServeError) as caught:
        runtime._uv(tmp_path / "venv", "venv", "--quiet", "--python", sys.executable, str(tmp_path / "venv"))
    message = str(caught.value)
    assert message.startswith(f"could not create the serving venv in {tmp_path / 'venv'} (`uv venv` exit ")
    # uv's own lines, which it wraps at long paths
    assert f"Failed to initialize cache at `{tmp_path}/file/home/.cache/uv`" in " ".join(message.split())
    assert message.endswith("\nuv's cache folder cannot be written: set UV_CACHE_DIR (or XDG_CACHE_HOME) to a "
                            "writable folder")
