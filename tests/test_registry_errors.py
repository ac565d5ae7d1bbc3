"""Registry problems name the models.yaml entry and say what to do (real sqlite MLflow registry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e_support.factory_env import FactoryEnv
from factory.errors import DeployError, RegistryError
from factory.loader import parse_catalog

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("registry")]  # needs only factory_env: the other worker


@pytest.fixture()
def registry(factory_env: FactoryEnv):
    from factory.registry import Registry

    def resolve(entry: str):
        catalog = parse_catalog(f"- {entry}\n")
        return Registry(catalog, factory_env.env["MLFLOW_TRACKING_URI"]).resolve(catalog.models[0])

    return resolve


def test_alias_resolves_to_its_version_with_signature_and_native_loader(registry) -> None:
    resolved = registry("{name: eta_minutes_5_PHV, alias: champion, endpoint: eta}")
    assert resolved.version == 1
    assert [column["name"] for column in resolved.signature["inputs"]] == ["trip distance km", "mean speed kmh"]
    assert resolved.flavor["loader"] == "skops"


CASES = [
    ("{name: eta_minutes_5_PHV, version: 9, endpoint: eta}",
     "models.yaml:1: model 'eta_minutes_5_PHV': 'eta_minutes_5_PHV' has no version 9; versions: 1; aliases: "
     "champion. Fix models.yaml or register that version"),
    ("{name: eta_minutes_5_PHV, alias: canary, endpoint: eta}",
     "models.yaml:1: model 'eta_minutes_5_PHV': 'eta_minutes_5_PHV' has no alias 'canary'; versions: 1; aliases: "
     "champion. Fix models.yaml or register that version"),
    ("{name: no_such_model, version: 1, endpoint: eta}",
     "models.yaml:1: model 'no_such_model': no registered model named 'no_such_model' in "),
]


@pytest.mark.parametrize("entry, message", CASES, ids=["version", "alias", "model"])
def test_missing_things_are_named_with_the_fix(registry, entry: str, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        registry(entry)
    assert str(caught.value).startswith(message)


def test_model_without_signature_is_refused(factory_env: FactoryEnv, registry) -> None:
    import mlflow
    from sklearn.linear_model import LinearRegression

    mlflow.set_tracking_uri(factory_env.env["MLFLOW_TRACKING_URI"])
    with mlflow.start_run():
        mlflow.sklearn.log_model(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), name="model",
                                 registered_model_name="unsigned_model", pip_requirements=["scikit-learn"])
    with pytest.raises(RegistryError) as caught:
        registry("{name: unsigned_model, version: 1, endpoint: u}")
    assert str(caught.value) == ("models.yaml:1: model 'unsigned_model': unsigned_model version 1 has no input "
                                 "signature; log it with `signature=infer_signature(X, y)` and register a new version")


def _unsigned_onnx(name: str, graph) -> None:
    import mlflow
    import mlflow.onnx

    with mlflow.start_run():
        mlflow.onnx.log_model(graph, name="model", registered_model_name=name, pip_requirements=["onnxruntime"])


def _graph(inputs: list, outputs: list):
    from onnx import helper

    nodes = [helper.make_node("Identity", [inputs[0].name], [outputs[0].name])]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_an_mlflow_onnx_model_logged_without_a_signature_is_served_by_its_graphs_input(factory_env: FactoryEnv,
                                                                                      registry) -> None:
    """mlflow.onnx infers no signature, even from an input example: the graph's one input is its tensor signature,
    which `mlflow models serve` feeds an `inputs` array by."""
    import mlflow
    import numpy as np
    from onnx import TensorProto, helper
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    mlflow.set_tracking_uri(factory_env.env["MLFLOW_TRACKING_URI"])
    model = LinearRegression().fit(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], dtype=np.float32), [0.0, 1.0, 3.0])
    _unsigned_onnx("unsigned_onnx", to_onnx(model, np.zeros((1, 2), dtype=np.float32)))
    resolved = registry("{name: unsigned_onnx, version: 1, endpoint: u}")
    assert resolved.signature == {"inputs": [{"type": "tensor", "name": "X", "tensor-spec": {
        "dtype": "float32", "shape": [-1, 2]}}], "outputs": None}
    assert (resolved.flavor["loader"], resolved.flavor["model_class"]) == ("pyfunc", "onnx.ModelProto")
    values = helper.make_tensor_value_info
    # skl2onnx's form of a table of mixed types: one [N, 1] input per column, served as those columns
    _unsigned_onnx("unsigned_onnx_columns", _graph([values("city", TensorProto.STRING, ["N", 1]),
                                                    values("km", TensorProto.FLOAT, ["N", 1])],
                                                   [values("y", TensorProto.STRING, ["N", 1])]))
    resolved = registry("{name: unsigned_onnx_columns, version: 1, endpoint: u}")
    assert resolved.signature == {"inputs": [{"type": "string", "name": "city", "required": True},
                                             {"type": "float", "name": "km", "required": True}], "outputs": None}
    assert resolved.flavor["feeds"] == [["city", "object", ["city"]], ["km", "float32", ["km"]]]
    # a text model's graph: one string column
    _unsigned_onnx("unsigned_onnx_text", _graph([values("review", TensorProto.STRING, ["N", 1])],
                                                [values("y", TensorProto.STRING, ["N", 1])]))
    resolved = registry("{name: unsigned_onnx_text, version: 1, endpoint: u}")
    assert (resolved.signature["inputs"], resolved.flavor["feeds"]) == (
        [{"type": "string", "name": "review", "required": True}], [["review", "object", ["review"]]])
    refused = {
        "fixed_batch": (_graph([values("x", TensorProto.DOUBLE, [1, 3])], [values("y", TensorProto.DOUBLE, [1, 3])]),
                        "its input 'x' takes a fixed batch of 1 row (shape [1, 3]) where a served batch holds any "
                        "number (or export the graph with a dynamic first dimension)"),
        "strings": (_graph([values("x", TensorProto.STRING, ["N", 2])], [values("y", TensorProto.STRING, ["N", 2])]),
                    "its input 'x' is a STRING tensor, not a numeric one"),
        "two_inputs": (_graph([values("a", TensorProto.FLOAT, ["N"]), values("b", TensorProto.FLOAT, ["N"])],
                              [values("y", TensorProto.FLOAT, ["N"])]), "the graph takes 2 inputs (a, b)"),
    }
    for kind, (graph, why) in refused.items():
        _unsigned_onnx(f"unsigned_onnx_{kind}", graph)
        with pytest.raises(RegistryError) as caught:
            registry(f"{{name: unsigned_onnx_{kind}, version: 1, endpoint: u}}")
        assert str(caught.value) == (f"models.yaml:1: model 'unsigned_onnx_{kind}': unsigned_onnx_{kind} version 1 "
                                     f"has no input signature, and its ONNX graph gives none: {why}; log it with "
                                     "`signature=infer_signature(X, y)` and register a new version")


def test_a_signature_of_one_column_tensors_is_served_as_columns_when_a_pyfunc_takes_them(factory_env: FactoryEnv,
                                                                                        registry) -> None:
    """MLflow infers it from a dict of [rows, 1] arrays; its pyfunc takes such a dict (factory/tensor_columns.py). A
    native sklearn model is handed no dict, so it stays refused."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    class Length(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.char.str_len(model_input["city"].astype(str)).reshape(-1) + model_input["km"].reshape(-1)

    mlflow.set_tracking_uri(factory_env.env["MLFLOW_TRACKING_URI"])
    example = {"city": np.array([["paris"], ["lyon"]], dtype=object), "km": np.array([[1.5], [2.0]])}
    signature = infer_signature(example, np.array([6.5, 6.0]))
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=Length(), signature=signature,
                                registered_model_name="tensor_columns_pyfunc", pip_requirements=["mlflow"])
        mlflow.sklearn.log_model(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), name="sklearn",
                                 signature=signature, registered_model_name="tensor_columns_sklearn",
                                 pip_requirements=["scikit-learn"])
    resolved = registry("{name: tensor_columns_pyfunc, version: 1, endpoint: t}")
    assert resolved.signature["inputs"] == [{"type": "string", "name": "city", "required": True},
                                            {"type": "double", "name": "km", "required": True}]
    assert (resolved.flavor["loader"], resolved.flavor["feeds"]) == (
        "pyfunc", [["city", "object", ["city"]], ["km", "float64", ["km"]]])
    with pytest.raises(RegistryError) as caught:
        registry("{name: tensor_columns_sklearn, version: 1, endpoint: t}")
    assert str(caught.value).startswith("models.yaml:1: model 'tensor_columns_sklearn': tensor_columns_sklearn version "
                                        "1: the signature has 2 inputs including a tensor: only a single tensor input "
                                        "is supported; ")


def test_nested_columns_resolve_to_pyfunc_and_an_any_column_is_refused(factory_env: FactoryEnv, registry) -> None:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, ParamSchema, ParamSpec, Schema
    from sklearn.linear_model import LinearRegression

    mlflow.set_tracking_uri(factory_env.env["MLFLOW_TRACKING_URI"])
    model = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
    for name, history, params in (("array_input_model", Array("double"), None),
                                  ("any_input_model", Array(AnyType()), ParamSchema([ParamSpec("k", "long", 3)]))):
        with mlflow.start_run():
            mlflow.sklearn.log_model(model, name="model", registered_model_name=name, pip_requirements=["scikit-learn"],
                                     signature=ModelSignature(inputs=Schema([ColSpec(history, "history"),
                                                                             ColSpec("double", "x")]), params=params))
    resolved = registry("{name: array_input_model, version: 1, endpoint: a}")
    # MLflow's schema enforcement shapes an array for the model: pyfunc, not the native sklearn loader.
    assert resolved.flavor["loader"] == "pyfunc" and "params" not in resolved.signature
    assert resolved.signature["inputs"][0] == {"type": "array", "items": {"type": "double"}, "name": "history",
                                               "required": True}
    with pytest.raises(RegistryError) as caught:
        registry("{name: any_input_model, version: 1, endpoint: a}")
    assert str(caught.value) == (
        "models.yaml:1: model 'any_input_model': any_input_model version 1: input column 'history' items has "
        "unsupported type 'any' (supported: binary, boolean, datetime, double, float, integer, long, string, array, "
        "map, object); the served API takes rows of columns of those types (arrays, objects and maps of them "
        "included) or one numeric tensor: log the model with such a signature and register a new version")


def test_no_registry_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from factory.registry import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RegistryError) as caught:
        tracking_uri(tmp_path)
    assert str(caught.value) == (f"no MLflow registry at {tmp_path / 'registry' / 'mlflow.db'}: run `make registry` "
                                 "to create the example registry, or set MLFLOW_TRACKING_URI to your tracking server")


def test_a_pinned_alias_model_builds_the_version_the_render_job_resolved(registry,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A sharded pipeline pins alias models (FACTORY_PINNED_VERSIONS): the pin, not the alias, decides."""
    monkeypatch.setenv("FACTORY_PINNED_VERSIONS", "eta_minutes_5_PHV=1")
    assert registry("{name: eta_minutes_5_PHV, alias: champion, endpoint: eta}").version == 1
    monkeypatch.setenv("FACTORY_PINNED_VERSIONS", "eta_minutes_5_PHV=9")
    with pytest.raises(RegistryError) as caught:
        registry("{name: eta_minutes_5_PHV, alias: champion, endpoint: eta}")
    assert str(caught.value).startswith("models.yaml:1: model 'eta_minutes_5_PHV': 'eta_minutes_5_PHV' has no "
                                        "version 9 (pinned for alias 'champion' by FACTORY_PINNED_VERSIONS); "
                                        "versions: 1; aliases: champion.")
    monkeypatch.setenv("FACTORY_PINNED_VERSIONS", "eta_minutes_5_PHV=one")
    with pytest.raises(DeployError) as bad:
        registry("{name: eta_minutes_5_PHV, alias: champion, endpoint: eta}")
    assert str(bad.value) == ("FACTORY_PINNED_VERSIONS: 'eta_minutes_5_PHV=one' is not `alias_model=version` for an "
                              "alias model of models.yaml; it is generated by `factory render`: re-run the pipeline")


def test_every_model_is_tried_and_each_one_that_did_not_build_is_named(factory_env: FactoryEnv, tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text("- {name: eta_minutes_5_PHV, version: 9, endpoint: eta}\n"
                       "- {name: no_such_model, version: 1, endpoint: nope}\n", encoding="utf-8")
    state = tmp_path / "state"
    env = {**factory_env.env, "FACTORY_STATE": str(state), "BENTOML_HOME": str(state / "bentoml")}
    result = FactoryEnv(factory_env.root, env).run("build", "-f", str(catalog), "--all", "--no-image", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert f"[1/2] eta_minutes_5_PHV: FAILED, {catalog}:1: model 'eta_minutes_5_PHV': " in result.stdout
    assert f"[2/2] no_such_model: FAILED, {catalog}:2: model 'no_such_model': " in result.stdout
    assert result.stderr.startswith(f"2 of 2 model(s) did not build:\n{catalog}:1: model 'eta_minutes_5_PHV': "
                                    "'eta_minutes_5_PHV' has no version 9; ")
    assert f"\n{catalog}:2: model 'no_such_model': no registered model named 'no_such_model' in " in result.stderr
    assert not list(state.glob("builds/*/record.json"))


def test_a_version_not_ready_and_an_alias_left_on_a_deleted_version_are_named(factory_env: FactoryEnv,
                                                                               registry) -> None:
    """Registries MLflow's sqlite store does not produce: one that registers asynchronously (a version
    PENDING_REGISTRATION or FAILED_REGISTRATION, written here in its own table) and one that deleted a version
    but kept its alias. Before, the first built whatever the version held, the second said the alias did not
    exist while listing it."""
    import sqlite3

    import mlflow

    uri = factory_env.env["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = client.get_model_version("eta_minutes_5_PHV", "1").source
    client.create_registered_model("registering_model")
    for _ in range(2):
        client.create_model_version("registering_model", source)
    with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE model_versions SET status = 'PENDING_REGISTRATION' WHERE name = 'registering_model' "
                   "AND version = 1")
        db.execute("UPDATE model_versions SET status = 'FAILED_REGISTRATION', status_message = 'artifact upload "
                   "failed' WHERE name = 'registering_model' AND version = 2")
        db.execute("INSERT INTO registered_model_aliases (alias, version, name) VALUES ('stale', 7, "
                   "'registering_model')")
    client.set_registered_model_alias("registering_model", "champion", "1")
    failures = {}
    for entry in ("version: 1", "version: 2", "alias: champion", "alias: stale"):
        with pytest.raises(RegistryError) as caught:
            registry(f"{{name: registering_model, {entry}, endpoint: r}}")
        failures[entry] = str(caught.value).removeprefix("models.yaml:1: model 'registering_model': ")
    pending = ("registering_model version 1 is still being registered (status PENDING_REGISTRATION, not READY); "
               "build it once the registry shows it READY, or name a READY version in models.yaml")
    assert failures == {
        "version: 1": pending,
        "version: 2": "registering_model version 2 failed to register (status FAILED_REGISTRATION: artifact upload "
                      "failed); its artifacts may be incomplete: register the model again and name the new version "
                      "in models.yaml",
        "alias: champion": pending,
        "alias: stale": "alias 'stale' of 'registering_model' points at version 7, which the registry no longer has; "
                        "versions: 1, 2. Point the alias at a version (MlflowClient().set_registered_model_alias("
                        "'registering_model', 'stale', VERSION)) or fix models.yaml"}
