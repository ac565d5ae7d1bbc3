"""A real sklearn pipeline with scikit-learn's default OneHotEncoder (handle_unknown="error"), compiled and native:
`factory build` finds its categories, `factory test` passes it, the served model answers as pyfunc does and refuses
an unknown category with a 400 naming the field and the categories (factory/categorical.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_support.categorical_models import MODEL, SEGMENTS
from e2e_support.factory_env import ROOT, FactoryEnv
from test_e2e_bento import post

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("registry")]
NATIVE = f"{MODEL}_native"


@pytest.fixture(scope="module")
def tested(factory_env: FactoryEnv, tmp_path_factory: pytest.TempPathFactory) -> tuple[FactoryEnv, str]:
    subprocess.run([sys.executable, str(ROOT / "tests" / "e2e_support" / "categorical_models.py"),
                    str(factory_env.root / "registry")], env=factory_env.env, check=True, capture_output=True,
                   timeout=300)
    catalog = tmp_path_factory.mktemp("categorical") / "models.yaml"
    catalog.write_text(f"models:\n  - {{name: {MODEL}, version: 1, endpoint: strict}}\n"
                       f"  - {{name: {NATIVE}, registry_name: {MODEL}, version: 1, endpoint: strict-native, "
                       "compile: {enabled: false}}\n")
    built = factory_env.run("build", "-f", str(catalog), MODEL, NATIVE, "--no-image")
    tested = factory_env.run("test", "-f", str(catalog), MODEL, NATIVE, "--examples", "30", "--load-seconds", "1",
                             check=False, timeout=600)
    return factory_env, built.stdout + tested.stdout + tested.stderr


def test_the_build_finds_the_categories_and_the_test_passes(tested: tuple[FactoryEnv, str]) -> None:
    env, output = tested
    line = ('categorical columns (the registry model raises on any other value; requests outside them get a 400): '
            '"segment" (3 categories)')
    for model, serves in ((MODEL, "compiled"), (NATIVE, "native")):
        assert f"{model}: {line}\n" in output and f"{model}: serves {serves}: " in output, output
        resolved = json.loads((env.state / "builds" / model / "src" / "resolved.json").read_text())
        assert [spec.get("categories") for spec in resolved["signature"]["inputs"]] == [None, list(SEGMENTS)]
        golden = json.loads((env.state / "builds" / model / "golden.json").read_text())
        assert {row["segment"] for case in golden for row in case["inputs"]} == set(SEGMENTS)
        report = json.loads((env.state / "reports" / model / "report.json").read_text())
        assert report["passed"] and report["capacity"]["rps"] > 0, output


def test_the_served_model_answers_as_pyfunc_and_refuses_an_unknown_category(tested: tuple[FactoryEnv, str]) -> None:
    from factory.runtime import bento_python
    from factory.serve import served
    from factory.state import StateDir

    env, _ = tested
    with env.activated():
        for model in (MODEL, NATIVE):
            record = json.loads((env.state / "builds" / model / "record.json").read_text())
            golden = json.loads(Path(record["golden"]).read_text())
            runtime = bento_python(StateDir.from_env(), model)
            with served(record["bento_tag"], env.state / f"{model}.log", "single", runtime) as server:
                url = server.url + "/predict"
                for case in golden[:6]:  # recorded from mlflow.pyfunc
                    assert post(url, json.dumps({"inputs": case["inputs"]}).encode()) == (200, case["outputs"])
                status, text = post(url, b'{"inputs": [{"distance km": 3.5, "segment": "BUS"}]}')
            answer = json.loads(text)
            assert (status, answer["error"]["field"], answer["error"]["message"]) == (
                400, "inputs[0].segment", "inputs[0].segment: Input should be 'PHV', 'TAXI' or 'XL'"), model
