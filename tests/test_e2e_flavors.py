"""Every flavor a registry holds, end to end: build, serve in its own venv, fuzz, golden, memory, manifests;
planted faults found; one model that cannot start never stops the others; one raising row fails alone."""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from e2e_support.factory_env import ROOT, FactoryEnv, example_module

FLAVORS = example_module("flavors")
COLUMNS_MODEL, CUSTOM_MODEL, NAN_MODEL = FLAVORS.COLUMNS_MODEL, FLAVORS.CUSTOM_MODEL, FLAVORS.NAN_MODEL
NO_START_MODEL, RAISING_MODEL, RAISING_KIND = FLAVORS.NO_START_MODEL, FLAVORS.RAISING_MODEL, FLAVORS.RAISING_KIND
# The LightGBM Booster served twice: compiled, and natively by choice (its own registered version under another name).
LIGHTGBM_NATIVE = f"{FLAVORS.LIGHTGBM_MODEL}_native"
# The mixed-type ONNX graph served twice: compiled, and through MLflow's pyfunc fed its one-column tensors.
ONNX_COLUMNS_PYFUNC = f"{FLAVORS.ONNX_COLUMNS_MODEL}_pyfunc"
TWINS = {LIGHTGBM_NATIVE: FLAVORS.LIGHTGBM_MODEL, ONNX_COLUMNS_PYFUNC: FLAVORS.ONNX_COLUMNS_MODEL}
WORKING_MODELS = (*FLAVORS.WORKING_MODELS, *TWINS)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("registry")]  # needs only factory_env: the other worker
ALL_MODELS = (*WORKING_MODELS, RAISING_MODEL, NAN_MODEL, NO_START_MODEL)
RANKS = [1.0, 2.5, 4.0, 8.0, 15.0]


# Compiled where exact (XGBoost: its float32 form splits as XGBoost does; the LightGBM Booster, fit on continuous
# distances, in double as LightGBM splits); these keep the native paths (sklearn on a DataFrame with pandas, on a
# tensor; a LightGBM Booster) served and checked end to end.
NATIVE_BY_CHOICE = (COLUMNS_MODEL, FLAVORS.TENSOR_MODEL, LIGHTGBM_NATIVE)
ONNX_MODELS = (FLAVORS.ONNX_MODEL, FLAVORS.ONNX_CLASSIFIER_MODEL, FLAVORS.ONNX_COLUMNS_MODEL, FLAVORS.ONNX_TEXT_MODEL)
COMPILED_MODELS = (FLAVORS.XGBOOST_MODEL, FLAVORS.LIGHTGBM_MODEL, *ONNX_MODELS)


def _catalog(path: Path) -> Path:
    entries = [f"  - {{name: {name}, version: 1, endpoint: {name.replace('_', '-')}"
               + (f", registry_name: {TWINS[name]}" if name in TWINS else "")
               + (", compile: {enabled: false}}" if name in (*NATIVE_BY_CHOICE, ONNX_COLUMNS_PYFUNC) else "}")
               for name in ALL_MODELS]
    path.write_text("defaults:\n  batching: {max_batch_size: 16, max_latency_ms: 1000}\nmodels:\n"
                    + "\n".join(entries) + "\n")
    return path


@pytest.fixture(scope="session")
def flavors(factory_env: FactoryEnv, tmp_path_factory: pytest.TempPathFactory) -> tuple[FactoryEnv, Path]:
    subprocess.run([sys.executable, str(ROOT / "examples" / "flavors.py"), str(factory_env.root / "registry")],
                   env=factory_env.env, check=True, capture_output=True, timeout=600)
    catalog = _catalog(tmp_path_factory.mktemp("flavors") / "models.yaml")
    # Images are issue 11's, proven on two models in test_e2e_images; here each flavor's own serving venv.
    built = factory_env.run("build", "-f", str(catalog), "--all", "--no-image", timeout=900)
    assert f"warning: {NAN_MODEL}: the registry's own model answered NaN" in built.stdout
    assert (f"{CUSTOM_MODEL}: serves pyfunc: an mlflow.pyfunc model has no ONNX converter (only sklearn, "
            "LightGBM and XGBoost do, and an mlflow.onnx model is one)\n") in built.stdout
    return factory_env, catalog


@pytest.fixture(scope="session")
def tested_all(flavors: tuple[FactoryEnv, Path]) -> tuple[FactoryEnv, Path, subprocess.CompletedProcess]:
    env, catalog = flavors
    result = env.run("test", "-f", str(catalog), "--all", "--examples", "25", "--load-seconds", "2", check=False,
                     timeout=1200)
    return env, catalog, result


def test_every_flavor_serves_and_matches_pyfunc(tested_all) -> None:
    env, _, result = tested_all
    for model in WORKING_MODELS:
        report = json.loads((env.state / "reports" / model / "report.json").read_text())
        assert report["passed"], (model, result.stdout, result.stderr)  # golden predictions included
        record = json.loads((env.state / "builds" / model / "record.json").read_text())
        assert json.loads(Path(record["golden"]).read_text()), model
    columns = json.loads((env.state / "builds" / COLUMNS_MODEL / "src" / "resolved.json").read_text())
    assert columns["flavor"]["loader"] == "cloudpickle"  # native, and fit on a DataFrame: pandas in its venv
    assert any(line.startswith("pandas==") for line in columns["requirements"])
    nested = json.loads((env.state / "builds" / FLAVORS.NESTED_MODEL / "record.json").read_text())
    assert any("params" in case for case in json.loads(Path(nested["golden"]).read_text()))  # served with params
    custom = json.loads((env.state / "builds" / CUSTOM_MODEL / "src" / "resolved.json").read_text())
    assert custom["flavor"]["loader"] == "pyfunc"  # with the package the runtime does not have
    assert any(line.startswith("sortedcontainers==") for line in custom["requirements"])


def test_boosters_serve_compiled_and_the_rest_natively_saying_why(tested_all) -> None:
    """Golden predictions held on both paths (the test above); here, which path served and why."""
    env, _, _ = tested_all
    paths = {model: json.loads((env.state / "builds" / model / "record.json").read_text())
             for model in WORKING_MODELS}
    for model in COMPILED_MODELS:
        assert paths[model]["serving_path"] == "compiled", paths[model]["serving_reason"]
        assert paths[model]["serving_reason"].startswith("its own ONNX graph" if model in ONNX_MODELS
                                                         else "ONNX float")
        resolved = json.loads((env.state / "builds" / model / "src" / "resolved.json").read_text())
        assert resolved["flavor"]["loader"] == "onnx"
        assert not [line for line in resolved["requirements"] if line.split("==")[0] in
                    ("lightgbm", "xgboost-cpu", "scikit-learn", "pandas", "mlflow", "onnx")]
    for model in ONNX_MODELS:  # MLflow's pyfunc answered golden.json on one thread, as the graph is served
        stored = env.state / "bentoml" / "models" / model / paths[model]["bento_model_tag"].split(":")[1]
        assert "intra_op_num_threads: 1" in (stored / "mlflow_model" / "MLmodel").read_text()
    # opened without en_US.UTF-8, which neither this machine nor the base image has (factory/onnx_locale.py)
    stored = env.state / "bentoml" / "models" / FLAVORS.ONNX_TEXT_MODEL / paths[FLAVORS.ONNX_TEXT_MODEL][
        "bento_model_tag"].split(":")[1]
    assert b"C.UTF-8" in (stored / "mlflow_model" / "model.onnx").read_bytes()
    for model in NATIVE_BY_CHOICE:
        assert (paths[model]["serving_path"], paths[model]["serving_reason"]) == (
            "native", "compile.enabled is false in models.yaml")
    assert paths[FLAVORS.LIGHTGBM_MODEL]["serving_reason"].startswith("ONNX float64 reproduces the registry model ")
    # its golden rows hold the threshold rows the build checked: the test above served them compiled
    golden = json.loads((env.state / "builds" / FLAVORS.LIGHTGBM_MODEL / "golden.json").read_text())
    assert sum(len(case["inputs"]) for case in golden) > 1000
    assert paths[CUSTOM_MODEL]["serving_path"] == "pyfunc"
    # MLflow's pyfunc raised on every frame of it: fed its one-column tensors, it answered golden.json's rows (the
    # test above) and served them
    assert paths[ONNX_COLUMNS_PYFUNC]["serving_path"] == "pyfunc"
    resolved = json.loads((env.state / "builds" / ONNX_COLUMNS_PYFUNC / "src" / "resolved.json").read_text())
    assert resolved["flavor"]["feeds"] == [["distance_km", "float64", ["distance km"]], ["hour", "int64", ["hour"]],
                                           ["segment", "object", ["segment"]]]
    assert (paths[FLAVORS.NESTED_MODEL]["serving_path"], paths[FLAVORS.NESTED_MODEL]["serving_reason"]) == (
        "pyfunc", "input column 'history' is an array: a compiled form takes flat numeric columns only, so "
                  "MLflow's pyfunc serves it")


def test_one_model_failing_never_stops_the_others(tested_all) -> None:
    _, _, result = tested_all
    assert result.returncode == 1
    for model in ALL_MODELS:
        assert model in result.stdout  # the table holds every model
    cause = next(line for line in result.stdout.splitlines() if f"{NO_START_MODEL}: FAILED" in line)
    assert "Traceback" not in result.stdout + result.stderr
    start = result.stdout.splitlines().index(cause)
    assert "full serve log:" in "\n".join(result.stdout.splitlines()[start:start + 3])


def test_planted_faults_fail_with_their_input_and_a_replay(tested_all) -> None:
    _, _, result = tested_all
    assert f"{RAISING_MODEL}: failed" in result.stderr and '"segment"' in result.stderr
    assert f"{NAN_MODEL}: failed" in result.stderr
    assert "factory serve" in result.stderr and "serve log:" in result.stderr


def test_manifests_refuse_failed_models_unless_allowed(tested_all) -> None:
    env, catalog, _ = tested_all
    refused = env.run("manifests", "-f", str(catalog), "--all", check=False)
    assert refused.returncode == 1
    assert f"{RAISING_MODEL} (failed)" in refused.stderr and "--allow-failed" in refused.stderr
    written = env.run("manifests", "-f", str(catalog), *WORKING_MODELS)
    assert "validated (Kubernetes 1.33, strict)" in written.stdout


def test_a_raising_row_fails_alone_in_a_burst(flavors) -> None:
    from factory.runtime import bento_python
    from factory.serve import served
    from factory.state import StateDir

    env, _ = flavors
    with env.activated():
        state = StateDir.from_env()
        record = state.build_record(RAISING_MODEL)
        with served(record.bento_tag, env.root / "burst.log", "single", bento_python(state, RAISING_MODEL)) as server:
            bodies = [{"inputs": [{"distance km": 0.5 + index % 17, "hour": index % 24,
                                   "segment": RAISING_KIND if index % 10 == 0 else "TAXI"}]} for index in range(200)]
            for body in bodies[1:21]:  # BentoML's batching optimizer learns latency from these before the burst
                _post(f"{server.url}/predict", body)
            with ThreadPoolExecutor(max_workers=50) as pool:
                answers = list(pool.map(lambda body: _post(f"{server.url}/predict", body), bodies))
    for body, (status, answer) in zip(bodies, answers):
        row = body["inputs"][0]
        if row["segment"] == RAISING_KIND:
            assert status == 500 and answer["error"]["code"] == "model_error", answer
            assert answer["error"]["field"] == "inputs[0]"
        else:
            assert status == 200, answer
            assert answer == [pytest.approx(bisect.bisect_left(RANKS, row["distance km"]) / len(RANKS))]


def _post(url: str, body: dict, attempts: int = 5) -> tuple[int, object]:
    """POST, retrying a 503 after its Retry-After as a client should: shedding load on a busy machine is
    not what the burst test is about."""
    import time
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        answer = json.loads(error.read())
        if error.code == 503 and attempts > 1:
            time.sleep(float(error.headers["Retry-After"]))
            return _post(url, body, attempts - 1)
        return error.code, answer


def test_up_serves_what_starts_and_lists_what_did_not(flavors, tmp_path: Path) -> None:
    from factory.up import running

    env, _ = flavors
    catalog = tmp_path / "models.yaml"
    catalog.write_text("models:\n" + "".join(f"  - {{name: {name}, version: 1, endpoint: {name.replace('_', '-')}}}\n"
                                             for name in (FLAVORS.LIGHTGBM_MODEL, NO_START_MODEL)))
    lines: list[str] = []
    with env.activated(), running(catalog, progress=lines.append) as (_, proxy):
        status, answer = _post(f"{proxy}/{FLAVORS.LIGHTGBM_MODEL.replace('_', '-')}",
                               {"inputs": [{"distance km": 3.0, "hour": 8}]})
    assert status == 200 and len(answer) == 1
    assert any(f"{NO_START_MODEL} did not start: the model server exited before it was ready" in line
               for line in lines), lines
    assert f"not serving (1): {NO_START_MODEL}" in lines
