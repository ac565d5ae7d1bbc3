"""Golden predictions come from the registry model itself: in the factory's process when it can load the
model, else in a venv with the model's own requirements (a statsmodels or Prophet model needs its library).
Here the "other venv" is this interpreter run as a separate process: what is checked is the hand-over (the
job, the answers, the errors), on a real pyfunc model saved by MLflow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from factory import golden, pyfunc_answers
from factory.errors import BuildError
from factory.registry import ResolvedModel

SIGNATURE = {"inputs": [{"type": "double", "name": "distance km", "required": True},
                        {"type": "datetime", "name": "when", "required": False}], "outputs": None}
WHERE = "models.yaml:3: model 'trips'"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow.pyfunc

    class Trips(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            if (model_input["distance km"] < 0).any():
                raise ValueError("a negative\n  distance")  # a message on lines, as MLflow's schema errors are
            hours = model_input["when"].dt.hour.fillna(0)  # raises unless `when` arrives as datetime64
            return (model_input["distance km"] * 2 + hours).to_numpy()

    target = tmp_path_factory.mktemp("golden") / "model"
    mlflow.pyfunc.save_model(str(target), python_model=Trips(), pip_requirements=["pandas"])
    return target


def _resolved() -> ResolvedModel:
    return ResolvedModel(registered_as="trips", version=1, run_id="", model_uri="models:/trips/1",
                         signature=SIGNATURE, flavor={"loader": "pyfunc"})


def _record(model_dir: Path, model_venv) -> golden.Golden:
    return golden.record_golden(_resolved(), model_dir, 4, model_venv, WHERE, count=6)


def test_a_model_the_factory_loads_is_answered_here(model_dir: Path) -> None:
    recorded = _record(model_dir, lambda: pytest.fail("the factory's process could load it"))
    cases, errors = recorded.cases, recorded.errors
    assert len(cases) + len(errors) == 6 and cases and not recorded.one_row_only and not recorded.miscounted
    assert set(errors) == {"ValueError: a negative distance"}  # one line each, for the build's warning
    for case in cases:
        assert case["outputs"] == [row["distance km"] * 2 + _hour(row.get("when")) for row in case["inputs"]]


def test_a_model_the_factory_cannot_load_is_answered_in_its_own_venv_alike(model_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    here = _record(model_dir, lambda: pytest.fail("the factory's process could load it"))

    def missing(*args, **kwargs):
        raise pyfunc_answers.MissingLibrary("ModuleNotFoundError: No module named 'statsmodels'")

    monkeypatch.setattr(pyfunc_answers, "answers", missing)
    venvs: list[Path] = []
    elsewhere = _record(model_dir, lambda: venvs.append(Path(sys.executable)) or Path(sys.executable))
    assert venvs == [Path(sys.executable)]
    assert elsewhere == here


def test_a_model_of_other_library_versions_is_answered_only_in_its_own_venv(model_dir: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An sklearn 1.3 pickle must not be answered by the factory's sklearn (`here` false: factory/model_env.py).
    The venv's answers come in process here (the hand-over itself is the test above)."""
    here = _record(model_dir, lambda: pytest.fail("the factory's process could load it"))
    answers = pyfunc_answers.answers
    asked: list[Path] = []

    def in_venv(python: Path, model: Path, inputs: list[dict], requests: list[dict], where: str,
                feeds: list | None) -> list[dict]:
        asked.append(python)
        return answers(str(model), inputs, requests, golden.bento_module("mf_inputs"), here=False, feeds=feeds)

    monkeypatch.setattr(golden, "_answers_in", in_venv)
    monkeypatch.setattr(pyfunc_answers, "answers", lambda *args, **kwargs: pytest.fail("answered in the factory"))
    venvs: list[Path] = []
    elsewhere = golden.record_golden(_resolved(), model_dir, 4, lambda: venvs.append(Path("/venv/bin/python"))
                                     or Path("/venv/bin/python"), WHERE, count=6, here=False)
    assert venvs == [Path("/venv/bin/python")] and set(asked) == {Path("/venv/bin/python")} and elsewhere == here


def test_a_model_mlflow_refuses_to_load_is_one_error_naming_the_entry(tmp_path: Path) -> None:
    """MLflow logs an SVC with pyfunc_predict_fn="decision_function" but its pyfunc cannot load it."""
    import mlflow.sklearn
    from sklearn.svm import SVC

    mlflow.sklearn.save_model(SVC().fit([[0.0], [1.0]], [0, 1]), str(tmp_path / "svc"), serialization_format="pickle",
                              pyfunc_predict_fn="decision_function", pip_requirements=["scikit-learn"])
    with pytest.raises(BuildError) as caught:
        _record(tmp_path / "svc", lambda: pytest.fail("not a missing library"))
    assert str(caught.value) == (
        f"{WHERE}: mlflow.pyfunc cannot load models:/trips/1 (MlflowException: Model implementation is missing "
        "required decision_function method.), so neither `mlflow models serve` nor the factory can serve it; fix the "
        "model as that error says and register a new version")


def test_a_model_answering_one_prediction_per_batch_answers_one_row_only(tmp_path: Path) -> None:
    """As an sklearn text pipeline does under pyfunc: TfidfVectorizer iterates the DataFrame's column names."""
    import mlflow.pyfunc

    class Summed(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [float(model_input["distance km"].sum())]

    mlflow.pyfunc.save_model(str(tmp_path / "summed"), python_model=Summed(), pip_requirements=["pandas"])
    recorded = _record(tmp_path / "summed", lambda: pytest.fail("the factory's process could load it"))
    assert recorded.cases and all(len(case["inputs"]) == len(case["outputs"]) == 1 for case in recorded.cases)
    assert recorded.errors and all(error.startswith("ValueError: the model returned 1 outputs for ")
                                   for error in recorded.errors)
    assert recorded.miscounted  # the build names the text-pipeline mistake, not a batching setting


def test_a_model_raising_on_several_rows_answers_one_row_only(tmp_path: Path) -> None:
    """As MLflow's statsmodels flavor does for a time-series model (ARIMA): "must have exactly one row"."""
    import mlflow.pyfunc

    class OneRow(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            if len(model_input) != 1:
                raise ValueError("prediction dataframes must have exactly one row")
            return (model_input["distance km"] * 2).to_numpy()

    mlflow.pyfunc.save_model(str(tmp_path / "one"), python_model=OneRow(), pip_requirements=["pandas"])
    recorded = _record(tmp_path / "one", lambda: pytest.fail("the factory's process could load it"))
    assert recorded.one_row_only and not recorded.miscounted  # the build says: batching 1, one request per run


def test_a_model_its_own_venv_cannot_load_is_one_error_naming_the_entry(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyfunc_answers, "answers", lambda *args, **kwargs: (_ for _ in ()).throw(
        pyfunc_answers.MissingLibrary("ModuleNotFoundError: No module named 'prophet'")))
    with pytest.raises(BuildError) as caught:
        _record(tmp_path / "gone", lambda: Path(sys.executable))
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: mlflow.pyfunc could not load the registry model even in a venv with its "
                              f"own requirements ({Path(sys.executable).parent.parent}; exit 1): ")
    assert message.endswith("; check the requirements it was logged with (pip_requirements / code_paths) or add "
                            "what it needs to serving.packages in models.yaml")
    assert "Traceback" not in message


def test_what_a_model_prints_in_its_own_venv_does_not_spoil_its_answers(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's Keras wrapper prints a progress bar per predict; native code may write to the fd itself."""
    import mlflow.pyfunc

    class Chatty(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            print("loading the model")

        def predict(self, context, model_input, params=None):
            print("1/1 ━━━━━━━━━━━━━━━━━━━━ 0s 46ms/step")
            os.write(1, b"from native code\n")
            return (model_input["distance km"] * 2).to_numpy()

    mlflow.pyfunc.save_model(str(tmp_path / "chatty"), python_model=Chatty(), pip_requirements=["pandas"])
    monkeypatch.setattr(pyfunc_answers, "answers", lambda *args, **kwargs: (_ for _ in ()).throw(
        pyfunc_answers.MissingLibrary("ModuleNotFoundError: No module named 'keras'")))
    recorded = _record(tmp_path / "chatty", lambda: Path(sys.executable))
    assert recorded.errors == [] and len(recorded.cases) == 6
    assert all(case["outputs"] == [row["distance km"] * 2 for row in case["inputs"]] for case in recorded.cases)


def test_a_predict_that_ends_its_venvs_process_is_reported_as_predict_not_load(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The model loads there; its library exits during predict (SystemExit passes `except Exception`)."""
    import mlflow.pyfunc

    class Exits(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            raise SystemExit("libfoo: fatal: no license for predict")

    mlflow.pyfunc.save_model(str(tmp_path / "exits"), python_model=Exits(), pip_requirements=["pandas"])
    monkeypatch.setattr(pyfunc_answers, "answers", lambda *args, **kwargs: (_ for _ in ()).throw(
        pyfunc_answers.MissingLibrary("ModuleNotFoundError: No module named 'libfoo'")))
    with pytest.raises(BuildError) as caught:
        _record(tmp_path / "exits", lambda: Path(sys.executable))
    assert str(caught.value) == golden.FAILED_STEP["predict"].join([f"{WHERE}: ", ""]).format(
        venv=Path(sys.executable).parent.parent, ended="exit 1", error="libfoo: fatal: no license for predict")


VENV = Path("/state/runtime/0123456789ab")
MARK = pyfunc_answers.STEP_MARK


@pytest.mark.parametrize("stderr, returncode, message", [
    ("Error: no such file\n", 1,
     "the golden script did not start in a venv with the model's own requirements (/state/runtime/0123456789ab; "
     "exit 1): Error: no such file; recreate that venv (delete it) and check serving.packages in models.yaml for a "
     "package that breaks it"),
    (f"{MARK}load\nTraceback (most recent call last):\nModuleNotFoundError: No module named 'prophet'\n", 1,
     "mlflow.pyfunc could not load the registry model even in a venv with its own requirements "
     "(/state/runtime/0123456789ab; exit 1): ModuleNotFoundError: No module named 'prophet'; check the requirements "
     "it was logged with (pip_requirements / code_paths) or add what it needs to serving.packages in models.yaml"),
    (f"{MARK}load\nloading\n{MARK}predict\n", -9,
     "the registry model loaded in a venv with its own requirements (/state/runtime/0123456789ab), but its predict "
     "ended the process while answering the sample requests (killed by signal 9): loading; a served model would end "
     "the same way: run mlflow.pyfunc.load_model(...).predict on a sample row in that venv to see why"),
    (f"{MARK}load\n{MARK}predict\n{MARK}encode\nTypeError: Object of type Timestamp is not JSON serializable\n", 1,
     "the registry model answered the sample requests in a venv with its own requirements "
     "(/state/runtime/0123456789ab), but its answers could not be written as JSON (exit 1): TypeError: Object of "
     "type Timestamp is not JSON serializable; the model returns a type the factory does not convert: have predict "
     "return numbers, strings, booleans or datetimes"),
    ("", -11, "the golden script did not start in a venv with the model's own requirements "
              "(/state/runtime/0123456789ab; killed by signal 11): (no output); recreate that venv (delete it) and "
              "check serving.packages in models.yaml for a package that breaks it"),
])
def test_a_failed_golden_script_names_the_step_it_was_in(stderr: str, returncode: int, message: str) -> None:
    assert golden.script_failure(stderr, returncode, VENV, WHERE) == f"{WHERE}: {message}"


def _hour(when) -> int:
    import pandas as pd

    if when is None:
        return 0
    stamp = pd.Timestamp(when)  # as served: an aware time in UTC, a naive one as it is
    return (stamp.tz_convert("UTC") if stamp.tzinfo else stamp).hour


def test_a_model_answering_rows_it_rarely_meets_does_not_warn_on_each(tmp_path: Path) -> None:
    """Golden and probe rows hold categories no encoder knows and numbers far from the training data, on purpose: an
    encoder ignoring unknown categories (and dropping its first) warned once per row, 26 lines in one build of two
    models, and numpy's log1p of a negative fare once per request."""
    import warnings

    import mlflow.sklearn
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    from factory.runtime import bento_module

    frame = pd.DataFrame({"zone": ["north", "south", "east", "north"], "fare": [3.0, 4.5, 5.0, 7.25]})
    model = make_pipeline(ColumnTransformer([("zone", OneHotEncoder(drop="first", handle_unknown="ignore"), ["zone"]),
                                             ("fare", FunctionTransformer(np.log1p), ["fare"])]),
                          Ridge()).fit(frame, [1.0, 2.0, 3.0, 4.0])
    mlflow.sklearn.save_model(model, str(tmp_path / "zones"), serialization_format="cloudpickle")
    inputs = [{"type": "string", "name": "zone", "required": True},
              {"type": "double", "name": "fare", "required": True}]
    rare = [{"inputs": [{"zone": "west", "fare": 2.0}]}, {"inputs": [{"zone": "north", "fare": -5.0}]}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answered = pyfunc_answers.answers(str(tmp_path / "zones"), inputs, rare, bento_module("mf_inputs"), True)
    assert "outputs" in answered[0] and answered[1]["error"].startswith("ValueError: Input X contains NaN"), answered
    assert not [str(warning.message) for warning in caught], [str(warning.message) for warning in caught]
