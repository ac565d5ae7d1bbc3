"""No command shows a traceback, whatever the catalog and the state directory hold.

A property test drives every command over corrupted and missing state files and hostile catalogs and
asserts one clear error (or success); table tests pin the exact messages of the tracebacks users met.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory.boundary import translate
from factory.cli import main
from factory.state import BuildRecord, ResolvedRecord, StateDir, TestReport

CATALOG = """\
kubernetes:
  namespace: mf
  image_registry: registry.example.com/mf
models:
  - name: alpha
    version: 1
    endpoint: probability
    parameters: [a]
    resources: {memory: 300Mi}
  - name: beta
    alias: champion
    endpoint: eta
    parameters: [b]
experiments:
  - name: ab
    endpoint: ab
    parameters: [x]
    variants:
      - {model: alpha, weight: 50}
      - {model: beta, weight: 50}
"""
MODELS = ("alpha", "beta")
SIGNATURE = {"inputs": [{"type": "double", "name": "x", "required": True}], "outputs": None}
PEAK = 200 * 1024**2
COMMANDS = {
    "validate": ["validate"], "routes": ["routes"], "render": ["render", "-o", "{root}/out"],
    "build": ["build", "--all"], "test": ["test", "--all", "--examples", "1", "--load-seconds", "0"],
    "manifests": ["manifests", "--all", "--proxy"], "deploy": ["deploy", "--dry-run"], "summary": ["summary"],
    "up": ["up"],
}
NEEDS_CATALOG = {"validate", "routes", "render", "build", "test", "manifests", "summary", "up"}


def write_state(root: Path) -> StateDir:
    """A state directory as build + test leave it (the Bentos themselves are not in the store)."""
    state = StateDir(root / "state")
    for model in MODELS:
        BuildRecord(model=model, content_hash="0" * 64, registry={"name": model, "version": 1},
                    bento_model_tag=f"{model}:r1", bento_tag=f"{model}:0", bento_export=str(root / "gone.bento"),
                    image=f"registry.example.com/mf/{model}:0", dockerfile="",
                    golden=str(state.golden_path(model))).save(state.record_path(model))
        ResolvedRecord(bento_model_tag=f"{model}:r1", signature=SIGNATURE, flavor={}, registry={}, requirements=[]
                       ).save(state.resolved_path(model))
        state.golden_path(model).write_text(json.dumps([{"inputs": [{"x": 1.0}], "outputs": [0.5]}]))
        TestReport(model=model, route=f"/{model}", bento_tag=f"{model}:0", seed=0, passed=True,
                   fuzz={"passed": True, "requests_fuzzed": 1, "failed_requests": 0, "latency_p50_ms": 1.0,
                         "latency_p99_ms": 1.0},
                   capacity={"slo_p99_ms": 100, "rps": 1.0, "connections": 1, "p99_ms": 1.0, "steps": [
                       {"connections": 1, "requests": 1, "rps": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "shed": 0,
                        "failures": 0, "statuses": {"200": 1}}]},
                   memory={"peak_mib": 200.0, "sampler": "psutil process tree", "phases": {}},
                   peak_bytes=PEAK, failures=[]).save(state.report_path(model))
    manifests = state.manifests_dir() / "alpha"
    manifests.mkdir(parents=True)
    (manifests / "service.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: alpha}\n")
    return state


def run(root: Path, command: str) -> Result:
    args = [part.format(root=root) for part in COMMANDS[command]]
    if command in NEEDS_CATALOG:
        args += ["-f", str(root / "models.yaml")]
    env = {"FACTORY_STATE": str(root / "state"), "BENTOML_HOME": str(root / "bentoml"),
           "MLFLOW_TRACKING_URI": "bogus://registry", "FACTORY_RUNTIME_PYTHON": sys.executable,
           "KUBECONFIG": str(root / "kubeconfig"), "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return CliRunner().invoke(main, args, env=env)


def assert_clear(result, command: str) -> None:
    output = result.output  # stdout and stderr interleaved
    assert result.exit_code in (0, 1), (command, result.exit_code, output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (command, repr(result.exception))
    assert "Traceback" not in output, (command, output)
    if result.exit_code:
        assert result.stderr.strip(), command
        assert "bug in the factory" not in result.stderr, (command, result.stderr)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
HOSTILE_VALUES = st.sampled_from([0, -1, 2**70, "lots", None, [], {}, "../../etc/passwd", "a\nb: c", 1e308])


@st.composite
def corruption(draw):
    """(relative path, what to do to it): the ways a state file or the catalog goes bad."""
    state_files = [f"state/builds/{m}/record.json" for m in MODELS] + [f"state/reports/{m}/report.json" for m in MODELS]
    state_files += [f"state/builds/{m}/src/resolved.json" for m in MODELS] + [f"state/builds/{m}/golden.json" for m in MODELS]
    target = draw(st.sampled_from(state_files + ["state/k8s/alpha/service.yaml", "models.yaml", "kubeconfig"]))
    kind = draw(st.sampled_from(["delete", "truncate", "bytes", "json", "field", "directory", "deep", "loop"]))
    if kind == "truncate":
        return target, kind, draw(st.integers(min_value=0, max_value=400))
    if kind == "bytes":
        return target, kind, draw(st.binary(max_size=64))
    if kind == "json":
        return target, kind, draw(JSON)
    if kind == "field":
        return target, kind, (draw(st.sampled_from(["peak_bytes", "model", "golden", "signature", "bento_tag",
                                                    "memory", "fuzz", "kubernetes", "models"])), draw(HOSTILE_VALUES))
    return target, kind, None


def corrupt(root: Path, target: str, kind: str, value) -> None:
    path = root / target
    original = path.read_bytes() if path.is_file() else b""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    if kind == "truncate":
        path.write_bytes(original[:value])
    elif kind == "bytes":
        path.write_bytes(value)
    elif kind == "json":
        path.write_text(json.dumps(value))
    elif kind == "field":
        document = _parsed(original)
        if isinstance(document, dict):
            document[value[0]] = value[1]
        path.write_text(json.dumps(document))
    elif kind == "directory":
        path.mkdir()
    elif kind == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "loop":
        os.symlink(path.name, path)


def _parsed(original: bytes):
    import yaml

    try:
        return yaml.safe_load(original)
    except yaml.YAMLError:
        return None


@pytest.mark.parametrize("command", sorted(COMMANDS))
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(damage=st.lists(corruption(), min_size=1, max_size=2))
def test_no_command_shows_a_traceback(tmp_path_factory: pytest.TempPathFactory, command: str, damage) -> None:
    root = tmp_path_factory.mktemp(command)
    (root / "models.yaml").write_text(CATALOG)
    write_state(root)
    for target, kind, value in damage:
        corrupt(root, target, kind, value)
    assert_clear(run(root, command), command)


# --- the tracebacks users met, with the exact messages that replace them ---------------------------

def _catalog(root: Path, text: str = CATALOG) -> Path:
    (root / "models.yaml").write_text(text)
    return root


def test_deep_yaml_nesting_is_located(tmp_path: Path) -> None:
    _catalog(tmp_path, "models:\n  - name: " + "[" * 500 + "]" * 500 + "\n")
    result = run(tmp_path, "validate")
    assert (result.exit_code, result.stderr) == (1, f"{tmp_path}/models.yaml:2:72: nested deeper than 64 levels "
                                                    "(hint: models.yaml needs a handful of levels: flatten the nesting)\n")


def test_summary_before_any_state(tmp_path: Path) -> None:
    result = run(_catalog(tmp_path), "summary")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[2:7] == [
        "/probability/a  -        alpha  not tested                                            300Mi           450Mi",
        "/eta/b          -        beta   not tested                                            (unmeasured)",
        "/ab/x           50%      alpha  not tested                                            300Mi           450Mi",
        "/ab/x           50%      beta   not tested                                            (unmeasured)",
        ""]
    assert (tmp_path / "state" / "summary.md").is_file()


@pytest.mark.parametrize("command", ["summary", "manifests"])
def test_truncated_report(tmp_path: Path, command: str) -> None:
    state = write_state(_catalog(tmp_path))
    report = state.report_path("beta")
    report.write_text(report.read_text()[:100])
    result = run(tmp_path, command)
    assert (result.exit_code, result.stderr) == (1, (
        f"{report}: not valid JSON at line 6 column 5 (Unterminated string starting at), probably cut short by "
        "an interrupted run; run `factory test beta` again\n"))


@pytest.mark.parametrize("command", ["summary", "manifests"])
def test_zero_peak_bytes(tmp_path: Path, command: str) -> None:
    state = write_state(_catalog(tmp_path))
    report = state.report_path("beta")
    report.write_text(report.read_text().replace(f'"peak_bytes": {PEAK}', '"peak_bytes": 0'))
    result = run(tmp_path, command)
    assert (result.exit_code, result.stderr) == (1, (
        f"{report}: peak_bytes: Input should be greater than 0; the file is not what this factory writes: "
        "run `factory test beta` again\n"))


def test_docker_sdk_errors_are_one_line() -> None:
    docker = pytest.importorskip("docker")
    error = translate(docker.errors.DockerException("Error while fetching server API version: "
                                                    "('Connection aborted.', FileNotFoundError(2, 'No such file'))"))
    assert str(error) == (
        "docker: DockerException: Error while fetching server API version: ('Connection aborted.', "
        "FileNotFoundError(2, 'No such file')) (hint: check that the Docker engine runs and answers `docker info` "
        "(or stop it: without Docker the factory writes Dockerfiles and serves Bentos directly))")


def test_failed_build_leftovers_get_a_hint() -> None:
    from bentoml.exceptions import BentoMLException

    error = translate(BentoMLException("Item 'alpha:0123' already exists in the store <osfs '/s/bentos'>"))
    assert str(error) == (
        "bentoml: BentoMLException: Item 'alpha:0123' already exists in the store <osfs '/s/bentos'> (hint: if "
        "BentoML names an item that already exists in the store, a failed build left it behind: `bentoml delete -y "
        "TAG` (with the same BENTOML_HOME) and run the command again)")


def test_default_registry_is_the_projects_not_the_catalogs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, project = tmp_path / "elsewhere", tmp_path / "project"
    catalog.mkdir()
    project.mkdir()
    _catalog(catalog)
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["build", "--all", "-f", str(catalog / "models.yaml")],
                                env={"FACTORY_STATE": str(tmp_path / "state"), "MLFLOW_TRACKING_URI": "",
                                     "BENTOML_HOME": str(tmp_path / "bentoml")})
    assert (result.exit_code, result.stderr) == (1, (
        f"no MLflow registry at {project / 'registry' / 'mlflow.db'}: run `make registry` to create the example "
        "registry, or set MLFLOW_TRACKING_URI to your tracking server\n"))


@pytest.mark.parametrize("command", ["build", "test", "summary"])
def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path, command: str) -> None:
    """Settings are read and checked in one place (factory/settings.py): every command reading them says the same."""
    root = _catalog(tmp_path)
    args = [part.format(root=root) for part in COMMANDS[command]] + ["-f", str(root / "models.yaml")]
    result = CliRunner().invoke(main, args, env={"FACTORY_STATE": str(root / "state"),
                                                 "FACTORY_TORCH_CPU_INDEX": "mirror.example/cpu"})
    assert (result.exit_code, result.stderr) == (1, (
        "FACTORY_TORCH_CPU_INDEX: 'mirror.example/cpu' is not a package index URL; set it to the http(s):// address "
        "of PyTorch's CPU index or a mirror of it (a PEP 503 `simple` page), or unset it for "
        "https://download.pytorch.org/whl/cpu\n"))


@pytest.mark.parametrize("option, value, message", [
    ("--examples", "-5", "Invalid value for '--examples': -5 is not in the range x>=0."),
    ("--load-seconds", "nan", "Invalid value for '--load-seconds': 'nan' is not a number of seconds"),
    ("--load-seconds", "1e309", "Invalid value for '--load-seconds': inf is not in the range 0<=x<=3600."),
])
def test_a_test_option_out_of_range_is_refused_before_anything_runs(tmp_path: Path, option: str, value: str,
                                                                      message: str) -> None:
    result = CliRunner().invoke(main, ["test", "--all", "-f", str(_catalog(tmp_path) / "models.yaml"), option, value],
                                env={"FACTORY_STATE": str(tmp_path / "state")})
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (2, f"Error: {message}")


def test_a_sqlite_uri_naming_no_mlflow_database_is_one_line(tmp_path: Path) -> None:
    not_a_database = tmp_path / "passwd"
    not_a_database.write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = CliRunner().invoke(main, ["build", "--all", "--no-image", "-f", str(_catalog(tmp_path) / "models.yaml")],
                                env={"FACTORY_STATE": str(tmp_path / "state"), "BENTOML_HOME": str(tmp_path / "b"),
                                     "MLFLOW_TRACKING_URI": f"sqlite:///{not_a_database}"})
    assert (result.exit_code, result.stderr) == (1, (
        f"MLflow cannot use the registry at sqlite:///{not_a_database}: file is not a database; set "
        "MLFLOW_TRACKING_URI to a tracking server, or unset it to use the project's registry/mlflow.db\n"))
    assert not_a_database.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
