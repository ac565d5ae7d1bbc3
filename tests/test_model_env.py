"""A model's own environment: requirements from requirements.txt or, without it, conda.yaml's pip section (as MLflow
reads them); a model logged under other library versions than the factory's is served in its own versions; an
sklearn model MLflow's pyfunc cannot load is refused at resolve. Real MLmodel files written by mlflow.sklearn."""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from factory.errors import BuildError, RegistryError
from factory.model_env import foreign_versions, graph_runtimes_only, loadable_bytecode, recorded_requirements
from factory.registry import _pyfunc_loadable
from factory.runtime import lock_pins, own_versions, resolve_requirements, venv_constraints

WHERE = "models.yaml:4: model 'old' version 1"
PINS = lock_pins()
SKLEARN = importlib.metadata.version("scikit-learn")
# requirements.txt as MLflow 2.16.2 wrote it for a RandomForestClassifier under scikit-learn 1.3.2 (/tmp/sweep3 run).
MLFLOW_2_16 = ["mlflow==2.16.2", "cloudpickle==3.1.3", "numpy==1.26.4", "scikit-learn==1.3.2", "scipy==1.17.1"]
OLD_PINS = ["scikit-learn==1.3.2", "numpy==1.26.4"]
LOGGED = [f"mlflow=={importlib.metadata.version('mlflow')}", *OLD_PINS]  # MLflow adds itself


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    target = tmp_path_factory.mktemp("env") / "model"
    mlflow.sklearn.save_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), str(target),
                              serialization_format="cloudpickle", pip_requirements=OLD_PINS)
    return target


def _copy(saved: Path, tmp_path: Path, *gone: str) -> Path:
    target = tmp_path / "model"
    shutil.copytree(saved, target)
    for name in gone:
        (target / name).unlink()
    return target


def test_requirements_txt_is_what_the_model_was_logged_with(saved: Path) -> None:
    assert [str(line) for line in recorded_requirements(saved, WHERE)] == LOGGED


def test_without_requirements_txt_conda_yamls_pip_section_is_read_as_mlflow_does(saved: Path, tmp_path: Path) -> None:
    import mlflow.pyfunc

    model = _copy(saved, tmp_path, "requirements.txt")
    expected = Path(mlflow.pyfunc.get_model_dependencies(str(model))).read_text(encoding="utf-8").split()
    assert [str(line) for line in recorded_requirements(model, WHERE)] == expected == LOGGED


def test_the_mlflow_1_layout_names_its_conda_file_alone(saved: Path, tmp_path: Path) -> None:
    model = _copy(saved, tmp_path, "requirements.txt", "python_env.yaml")
    text = (model / "MLmodel").read_text(encoding="utf-8")
    old = text.replace("    env:\n      conda: conda.yaml\n      virtualenv: python_env.yaml\n", "    env: conda.yaml\n")
    assert old != text
    (model / "MLmodel").write_text(old, encoding="utf-8")
    assert [str(line) for line in recorded_requirements(model, WHERE)] == LOGGED
    (model / "conda.yaml").unlink()
    assert recorded_requirements(model, WHERE) == []  # nothing recorded: served with the runtime's own versions


@pytest.mark.parametrize("pip, message", [
    (["numpy==1.26.4", "--extra-index-url http://evil.example/simple"],
     "conda.yaml pip entry:2: pip option --extra-index-url (another package index) is refused"),
    ("numpy", "conda.yaml pip entry: the pip section is not a list of requirement strings; re-log the model with "
              "pip_requirements"),
])
def test_a_refused_conda_pip_entry_names_the_file_and_entry(saved: Path, tmp_path: Path, pip, message: str) -> None:
    import yaml

    model = _copy(saved, tmp_path, "requirements.txt")
    (model / "conda.yaml").write_text(yaml.safe_dump({"dependencies": ["python=3.11", {"pip": pip}]}), encoding="utf-8")
    with pytest.raises(BuildError) as error:
        recorded_requirements(model, WHERE)
    assert str(error.value).startswith(f"{WHERE}: {message}")


@pytest.mark.parametrize("recorded, foreign", [
    (OLD_PINS, [f"scikit-learn==1.3.2 (the factory has {SKLEARN})", f"numpy==1.26.4 (the factory has {PINS['numpy']})"]),
    ([f"scikit-learn=={SKLEARN}", "numpy>=1.20"], []),
    (["mlflow==2.9.2", "mlflow-skinny==2.9.2"], []),  # which MLflow logged it never changes its answers
    (["not-installed-here==1.0"], []),  # loading fails loudly instead
    (["scikit-learn==1.3.2; python_version < '3'"], []),  # not for this interpreter
])
def test_foreign_versions_are_the_model_pins_the_factory_does_not_have(recorded, foreign) -> None:
    assert foreign_versions([Requirement(line) for line in recorded]) == foreign


@pytest.mark.parametrize("recorded, only", [
    (["onnx==1.23.1", "onnxruntime==1.30.0", "mlflow==2.9.2"], True),  # mlflow.onnx's own, from another machine
    (["onnxruntime-gpu==1.30.0"], True),
    (["onnxruntime==1.30.0", "numpy==1.26.4"], False),  # numpy's arithmetic may answer otherwise
    ([f"onnxruntime=={importlib.metadata.version('onnxruntime')}"], True),  # nothing foreign at all
])
def test_an_onnx_graph_logged_under_other_onnx_runtimes_alone_may_compile(recorded: list[str], only: bool) -> None:
    assert graph_runtimes_only([Requirement(line) for line in recorded]) == only


def test_a_model_of_older_versions_is_served_in_them() -> None:
    model = [Requirement(line) for line in MLFLOW_2_16]
    native = resolve_requirements(model, ("scikit-learn", "cloudpickle", "pandas"), (), True, WHERE)
    service = tuple(f"{name}=={PINS[name]}" for name in ("bentoml", "httptools", "msgspec", "orjson", "pydantic",
                                                          "uvicorn", "uvloop"))
    assert native == tuple(sorted((*service, "cloudpickle==3.1.3", "numpy==1.26.4", "pandas", "scikit-learn==1.3.2",
                                   "scipy==1.17.1")))
    pyfunc = resolve_requirements(model, ("mlflow", "pandas"), (), False, WHERE)
    assert "mlflow==2.16.2" in pyfunc and "pandas" in pyfunc  # pandas follows mlflow 2.16's own bounds
    assert own_versions(Requirement(line) for line in native) and venv_constraints(native) == ""


def test_a_model_of_the_lock_versions_keeps_the_lock_and_its_constraints() -> None:
    model = [Requirement(f"scikit-learn=={PINS['scikit-learn']}"), Requirement("numpy>=1.20")]
    lines = resolve_requirements(model, ("scikit-learn",), (), True, WHERE)
    assert f"numpy=={PINS['numpy']}" in lines and not own_versions(Requirement(line) for line in lines)
    assert f"pandas=={PINS['pandas']}\n" in venv_constraints(lines)


def test_a_model_cannot_replace_the_served_apis_own_framework() -> None:
    with pytest.raises(BuildError) as error:
        resolve_requirements([Requirement("pydantic<2")], ("mlflow",), (), False, WHERE)
    assert str(error.value) == (
        f"{WHERE}: the model requires pydantic<2 (its MLflow requirements.txt) but the served API runs on "
        f"pydantic=={PINS['pydantic']} (requirements.lock), which a model cannot replace; re-log the model without "
        f"pydantic in its pip_requirements, or with a version pydantic=={PINS['pydantic']} satisfies")


@pytest.mark.parametrize("predict_fn, refused", [
    ("decision_function", True), ("score_samples", True), ("predict_proba", False), ("predict", False)])
def test_an_sklearn_predict_fn_mlflows_pyfunc_cannot_load_is_refused_at_resolve(tmp_path: Path, predict_fn: str,
                                                                                refused: bool) -> None:
    import mlflow.sklearn
    from mlflow.models import Model
    from sklearn.ensemble import IsolationForest
    from sklearn.linear_model import LogisticRegression

    estimator = IsolationForest(n_estimators=2) if predict_fn == "score_samples" else LogisticRegression()
    mlflow.sklearn.save_model(estimator.fit([[0.0], [1.0]], [0, 1]), str(tmp_path / "m"), pyfunc_predict_fn=predict_fn,
                              serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    flavors = Model.load(str(tmp_path / "m")).flavors
    if not refused:
        _pyfunc_loadable(flavors, WHERE)
        return
    with pytest.raises(RegistryError) as error:
        _pyfunc_loadable(flavors, WHERE)
    assert str(error.value) == (
        f"{WHERE}: it was logged with pyfunc_predict_fn='{predict_fn}', which MLflow's pyfunc cannot load (it serves "
        "predict, predict_proba, predict_log_proba, predict_joint_log_proba, score), so neither `mlflow models serve` "
        "nor the factory can serve it; log it with one of those, or as an mlflow.pyfunc.PythonModel whose predict "
        f"calls the estimator's {predict_fn}, and register a new version")


def test_a_real_mlflow_2_9_model_with_only_conda_yaml_is_served_in_its_own_versions() -> None:
    """Checked-in metadata of a model MLflow 2.9.2 logged (tests/model_fixtures/README.md)."""
    model = Path(__file__).parent / "model_fixtures" / "mlflow_2_9_conda_only"
    recorded = recorded_requirements(model, WHERE)
    assert [str(line) for line in recorded] == ["mlflow==2.9.2", "cloudpickle==3.1.3", "numpy==1.26.4",
                                                "packaging==23.2", "pyyaml==6.0.4", "scikit-learn==1.3.2",
                                                "scipy==1.17.1"]
    assert "scikit-learn==1.3.2 (the factory has " + SKLEARN + ")" in foreign_versions(recorded)
    served = resolve_requirements(recorded, ("scikit-learn", "cloudpickle", "pandas"), (), True, WHERE)
    assert {"scikit-learn==1.3.2", "numpy==1.26.4", "pandas"} <= set(served) and not any(
        line.startswith("mlflow") for line in served)


FIXTURES = Path(__file__).parent / "model_fixtures"
OURS = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_a_pickle_carrying_another_pythons_bytecode_is_refused_before_anything_loads_it(tmp_path: Path) -> None:
    """A PythonModel logged from Python 3.12 crashed `factory build` (a segfault loading its 3.12 bytecode, every
    later model unbuilt); a pickle without code (an sklearn estimator) loads across versions and passes."""
    with pytest.raises(BuildError) as caught:
        loadable_bytecode(FIXTURES / "python_3_12_pyfunc", WHERE)
    assert str(caught.value) == (
        f"{WHERE}: python_model.pkl holds Python code pickled by value under Python 3.12.1 (a class or function "
        f"defined in a notebook or __main__, which cloudpickle saves as bytecode), and the factory serves Python "
        f"{OURS}, which cannot run that bytecode; log the model from Python {OURS}, or as a model from code "
        '(python_model="model.py") or with its classes in an importable module (code_paths), and register a new version')
    loadable_bytecode(FIXTURES / "python_3_12_sklearn", WHERE)
    same = shutil.copytree(FIXTURES / "python_3_12_pyfunc", tmp_path / "same")
    (same / "MLmodel").write_text((same / "MLmodel").read_text().replace("python_version: 3.12.1",
                                                                         f"python_version: {OURS}.0"))
    loadable_bytecode(same, WHERE)  # logged by the factory's own Python: its bytecode runs
