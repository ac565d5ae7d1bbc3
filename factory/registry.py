"""The MLflow registry: resolve each catalog entry to one registered version, its signature and flavor.

MLflow exceptions stop here and become RegistryErrors that name the models.yaml entry and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from factory import registry_access, tensor_columns
from factory.catalog import Catalog, ModelSpec
from factory.errors import RegistryError, ServeError
from factory.settings import PINNED_VERSIONS_ENV, Settings, public_url

# What the runtime adds to a model's own requirements when it serves the model through mlflow.pyfunc.
PYFUNC_PACKAGES = ("mlflow", "pandas")

REGISTRY_DIR = "registry"
SKLEARN_FORMATS = ("skops", "pickle", "cloudpickle")
LIGHTGBM_BOOSTER = "lightgbm.basic.Booster"
ONNX_MODEL = "onnx.ModelProto"  # an mlflow.onnx model's graph, which `factory build` may serve without MLflow
_SERIALIZER_PACKAGES = {"skops": ["skops"], "cloudpickle": ["cloudpickle"], "pickle": []}


@dataclass(frozen=True)
class ResolvedModel:
    """One registered model version, as the build needs it."""

    registered_as: str
    version: int
    run_id: str
    model_uri: str
    signature: dict
    flavor: dict
    unsigned: bool = False  # no signature was logged: `signature` is its ONNX graph's inputs' (factory/onnx_graph.py)

    @property
    def fingerprint(self) -> str:
        """Changes whenever the registry would hand us different model content."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def tracking_uri(project_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a tracking server), else the project's embedded sqlite registry,
    `registry/mlflow.db` in the directory `factory` runs from (as `make` does), wherever -f points."""
    settings = Settings.from_env()
    if settings.tracking_uri:
        return settings.tracking_uri
    if settings.registry_uri:
        # Artifacts (`runs:/`, `mlflow-artifacts:/`, a version's `models:/m-...` source) resolve through the
        # tracking server: the embedded registry's would be the wrong one.
        raise RegistryError("MLFLOW_REGISTRY_URI is set but MLFLOW_TRACKING_URI is not: MLflow finds a version's "
                            "artifacts through the tracking server; set MLFLOW_TRACKING_URI too (the same URI when "
                            "one server holds both)")
    database = (project_dir / REGISTRY_DIR / "mlflow.db").resolve()
    if not database.is_file():
        raise RegistryError(f"no MLflow registry at {database}: run `make registry` to create the example "
                            "registry, or set MLFLOW_TRACKING_URI to your tracking server")
    # A URI holds no spaces: SQLAlchemy, which opens it, percent-decodes the path (a checkout under "/home/Jane Doe/").
    return f"sqlite:///{quote(str(database))}"


def registry_uris(project_dir: Path) -> tuple[str, str]:
    """(tracking URI, registry URI): MLflow's precedence, README "MLflow registries"."""
    return registry_access.registry_uris(tracking_uri(project_dir))


class Registry:
    def __init__(self, catalog: Catalog, uri: str, registry_uri: Optional[str] = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        from factory.deploy_record import parse_kept_versions

        self.catalog = catalog
        registry_uri = registry_uri or uri
        self.uri = public_url(registry_uri)  # shown and recorded: never a credential in it
        self.variable = "MLFLOW_REGISTRY_URI" if registry_uri != uri else "MLFLOW_TRACKING_URI"
        self.registry_uri = registry_uri
        # A sharded pipeline's render job resolved its alias models once: every job builds that version.
        self.pinned = parse_kept_versions(Settings.from_env().pinned_versions, catalog, PINNED_VERSIONS_ENV)
        # get_model_info and artifact downloads read the global URIs; unset, MLflow 3 would quietly
        # create an empty sqlite registry in the working directory.
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError  # a sqlite URI naming a file that is no MLflow database

        registry_access.bound_waits()
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(registry_uri)
            self.client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
        except (MlflowException, SQLAlchemyError) as exc:
            reason = exc.message if isinstance(exc, MlflowException) else str(getattr(exc, "orig", None) or exc)
            raise RegistryError(f"MLflow cannot use the registry at {self.uri}: "
                                f"{reason.split(';')[0].splitlines()[0]}; set MLFLOW_TRACKING_URI to a tracking "
                                "server, or unset it to use the project's registry/mlflow.db") from exc
        registry_access.probe(self.client, uri, registry_uri)

    def resolve(self, model: ModelSpec) -> ResolvedModel:
        from mlflow.exceptions import MlflowException

        where = self.catalog.where(model.name)
        version = None
        try:
            version = self._version(model, where)
            info = self._model_info(model.registered_as, version)
        except RegistryError:
            raise
        except Exception as exc:  # MLflow's, or the artifact store's (boto3 missing, botocore's errors)
            failure = registry_access.explain(exc, self.registry_uri, self.variable, where,
                                              f"{model.registered_as} version {version}")
            if failure is None and not isinstance(exc, MlflowException):
                raise
            raise RegistryError(failure or f"{where}: the registry at {self.uri} failed: {exc.message}; check "
                                "MLFLOW_TRACKING_URI and that the server is up") from exc
        unsigned = info.signature is None or info.signature.inputs is None
        signature = (self._graph_signature(model, version, info.flavors, where) if unsigned
                     else _signature(info.signature))
        _answers_rows(info.flavors, f"{where}: {model.registered_as} version {version}")
        signature, flavor = served(info.flavors, signature)
        _servable(signature, f"{where}: {model.registered_as} version {version}")
        _pyfunc_loadable(info.flavors, f"{where}: {model.registered_as} version {version}")
        return ResolvedModel(registered_as=model.registered_as, version=version, run_id=info.run_id or "",
                             model_uri=f"models:/{model.registered_as}/{version}", signature=signature,
                             flavor=flavor, unsigned=unsigned)

    def _graph_signature(self, model: ModelSpec, version: int, flavors: dict, where: str) -> dict:
        """A model logged without a signature has none to serve by, unless it is an mlflow.onnx model (which infers
        none): its graph's inputs then are its tensor signature (factory/onnx_graph.py)."""
        from factory.onnx_graph import input_signature
        from factory.onnx_convert import NotConvertible

        what = f"{where}: {model.registered_as} version {version} has no input signature"
        fix = "log it with `signature=infer_signature(X, y)` and register a new version"
        graph = (flavors.get("onnx") or {}).get("data")
        if flavors.get("python_function", {}).get("loader_module") != "mlflow.onnx" or not graph:
            raise RegistryError(f"{what}; {fix}")
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        with tempfile.TemporaryDirectory(prefix="factory-graph-") as folder:
            try:
                path = ModelsArtifactRepository(f"models:/{model.registered_as}/{version}").download_artifacts(
                    graph, folder)
            except Exception as exc:  # MLflow's, or the artifact store's
                raise RegistryError(f"{what}, and its ONNX graph {graph} did not download to read one from: "
                                    f"{type(exc).__name__}: {str(exc)[:200]}; {fix}") from exc
            try:
                return input_signature(path)
            except NotConvertible as exc:
                raise RegistryError(f"{what}, and its ONNX graph gives none: {exc}; {fix}") from exc
            except Exception as exc:  # onnx's own, on a file it cannot parse
                raise RegistryError(f"{what}, and its ONNX graph {graph} does not load ({type(exc).__name__}: "
                                    f"{str(exc)[:200]}); {fix}") from exc

    def _version(self, model: ModelSpec, where: str) -> int:
        from mlflow.exceptions import MlflowException

        try:
            if model.alias is not None and model.name in self.pinned:
                found = self.client.get_model_version(model.registered_as, str(self.pinned[model.name]))
            elif model.alias is not None:
                found = self.client.get_model_version_by_alias(model.registered_as, model.alias)
            else:
                found = self.client.get_model_version(model.registered_as, str(model.version))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise RegistryError(f"{where}: {self._missing(model)}") from exc
        return _ready(found, f"{where}: {model.registered_as} version {found.version}")

    def _missing(self, model: ModelSpec) -> str:
        from mlflow.exceptions import MlflowException

        try:
            registered = self.client.get_registered_model(model.registered_as)
        except MlflowException:
            return (f"no registered model named '{model.registered_as}' in {self.uri}; register it, or set "
                    "`registry_name:` in models.yaml to its registered name")
        versions = sorted(int(v.version) for v in self.client.search_model_versions(f"name='{model.registered_as}'"))
        aliases = sorted(registered.aliases or {})
        if model.alias in aliases and model.name not in self.pinned:
            # A registry that deleted the version without its alias (MLflow's own stores drop both).
            return (f"alias '{model.alias}' of '{model.registered_as}' points at version "
                    f"{registered.aliases[model.alias]}, which the registry no longer has; versions: "
                    f"{', '.join(map(str, versions)) or 'none'}. Point the alias at a version "
                    f"(MlflowClient().set_registered_model_alias('{model.registered_as}', '{model.alias}', VERSION)) "
                    "or fix models.yaml")
        wanted = f"alias '{model.alias}'" if model.alias else f"version {model.version}"
        if model.alias and model.name in self.pinned:
            wanted = f"version {self.pinned[model.name]} (pinned for alias '{model.alias}' by {PINNED_VERSIONS_ENV})"
        return (f"'{model.registered_as}' has no {wanted}; versions: {', '.join(map(str, versions)) or 'none'}"
                f"; aliases: {', '.join(aliases) or 'none'}. Fix models.yaml or register that version")

    def _model_info(self, name: str, version: int) -> Any:
        import mlflow.models

        return mlflow.models.get_model_info(f"models:/{name}/{version}")


def _ready(version: Any, what: str) -> int:
    """The version's number, once its registration finished: a registry that registers asynchronously
    (MLflow's REST API allows it) holds PENDING_REGISTRATION or FAILED_REGISTRATION versions whose
    artifacts may be missing or partial; MLflow's own `register_model` waits for READY likewise."""
    status = version.status or "READY"
    if status == "PENDING_REGISTRATION":
        raise RegistryError(f"{what} is still being registered (status PENDING_REGISTRATION, not READY); build it "
                            "once the registry shows it READY, or name a READY version in models.yaml")
    if status != "READY":
        detail = f": {version.status_message}" if version.status_message else ""
        raise RegistryError(f"{what} failed to register (status {status}{detail}); its artifacts may be incomplete: "
                            "register the model again and name the new version in models.yaml")
    return int(version.version)


def _signature(signature: Any) -> dict:
    """Inputs and outputs, and the inference params when the signature has a ParamSchema (a signature
    without keeps its old form, so the build of a model whose version did not change is not redone)."""
    as_dict = signature.to_dict()
    parsed = {"inputs": json.loads(as_dict["inputs"]),
              "outputs": json.loads(as_dict["outputs"]) if as_dict.get("outputs") else None}
    if as_dict.get("params"):
        parsed["params"] = json.loads(as_dict["params"])
    return parsed


def _servable(signature: dict, what: str) -> None:
    """Refused here, naming the models.yaml entry, rather than deep in the build: an input the generated API
    cannot take (an `any` column, a tensor of strings, a binary param)."""
    from factory.fuzz import signature_columns, signature_params  # hypothesis: imported only when resolving

    try:
        signature_columns(signature)
        signature_params(signature)
    except ServeError as exc:
        raise RegistryError(f"{what}: {exc}; the served API takes rows of columns of those types (arrays, objects "
                            "and maps of them included) or one numeric tensor: log the model with such a signature "
                            "and register a new version") from exc


def _answers_rows(flavors: dict, what: str) -> None:
    """MLflow's GenAI interfaces are not row models: MLflow writes their signature (free-form `any` fields,
    which no request can be generated from) and their pyfunc reads row 0 of a batch and answers one response
    object, so neither the fuzzing nor the batching of a row API applies. Refused before the signature, whose
    `any` type the author never wrote."""
    loader_module = flavors.get("python_function", {}).get("loader_module") or ""
    interface = _GENAI_LOADERS.get(loader_module)
    if interface:
        raise RegistryError(f"{what}: it is an MLflow {interface} ({loader_module}): MLflow fixes its request "
                            "schema and it answers one chat request per call with one response object, not one "
                            "prediction per row, so the factory cannot serve it; serve it with `mlflow models serve` "
                            "or an agent-serving platform, or log its logic as an mlflow.pyfunc.PythonModel with a "
                            "typed signature that answers one output per input row, and register a new version")


_GENAI_LOADERS = {"mlflow.pyfunc.loaders.chat_model": "ChatModel", "mlflow.pyfunc.loaders.chat_agent": "ChatAgent",
                  "mlflow.pyfunc.loaders.responses_agent": "ResponsesAgent"}


def _pyfunc_loadable(flavors: dict, what: str) -> None:
    """MLflow logs an sklearn model with any `pyfunc_predict_fn` the estimator has, but its pyfunc loads only a few
    (`decision_function`, `score_samples` and `transform` are refused at load): refused here, with the way out."""
    from mlflow.sklearn import _SklearnModelWrapper

    predict_fn = flavors.get("python_function", {}).get("predict_fn", "predict")
    served = ["predict", *_SklearnModelWrapper._SUPPORTED_CUSTOM_PREDICT_FN]
    if flavors.get("python_function", {}).get("loader_module") == "mlflow.sklearn" and predict_fn not in served:
        raise RegistryError(f"{what}: it was logged with pyfunc_predict_fn='{predict_fn}', which MLflow's pyfunc "
                            f"cannot load (it serves {', '.join(served)}), so neither `mlflow models serve` nor the "
                            f"factory can serve it; log it with one of those, or as an mlflow.pyfunc.PythonModel whose "
                            f"predict calls the estimator's {predict_fn}, and register a new version")


def served(flavors: dict, signature: dict) -> tuple[dict, dict]:
    """The signature a model is served by, and how it loads (`_flavor`). One-column tensors are served as columns,
    and fed to a pyfunc model as the tensors (factory/tensor_columns.py)."""
    flavor = _flavor(flavors, signature)
    fed = tensor_columns.as_columns(signature) if flavor["loader"] == "pyfunc" else None
    return (fed[0], {**flavor, "feeds": fed[1]}) if fed else (signature, flavor)


def _flavor(flavors: dict, signature: dict) -> dict:
    """How the served model loads: natively where its flavor allows (no mlflow import), else pyfunc.

    `packages` are what the runtime adds for that loader; the model's own requirements come on top.
    A signature with array, object or map columns, or with params, always loads through pyfunc: MLflow's
    schema enforcement shapes nested values for the model, and params are pyfunc's to pass on."""
    pyfunc = flavors.get("python_function", {})
    loader_module = pyfunc.get("loader_module")
    base = {"predict_fn": pyfunc.get("predict_fn", "predict")}
    if pyfunc.get("code"):  # code_paths: the module a pickled custom class is imported from
        base["code"] = pyfunc["code"]
    if pyfunc_only(signature):
        return {**base, "loader": "pyfunc", "packages": list(PYFUNC_PACKAGES)}
    sklearn, lgb, xgb = flavors.get("sklearn", {}), flavors.get("lightgbm", {}), flavors.get("xgboost", {})
    if loader_module == "mlflow.sklearn" and sklearn.get("serialization_format") in SKLEARN_FORMATS:
        serialization = sklearn["serialization_format"]
        return {**base, "loader": serialization, "model_file": sklearn["pickled_model"],
                "trusted_types": sorted(sklearn.get("skops_trusted_types") or []),
                "packages": ["scikit-learn", *_SERIALIZER_PACKAGES[serialization]]}
    if loader_module == "mlflow.lightgbm" and lgb.get("data"):
        model_class = lgb.get("model_class", LIGHTGBM_BOOSTER)
        serialization = lgb.get("serialization_format", "cloudpickle")
        extra = [] if model_class == LIGHTGBM_BOOSTER else ["scikit-learn", *_SERIALIZER_PACKAGES[serialization]]
        return {**base, "loader": "lightgbm", "model_file": lgb["data"], "model_class": model_class,
                "serialization": serialization, "trusted_types": sorted(lgb.get("skops_trusted_types") or []),
                "packages": ["lightgbm", *extra]}
    if loader_module == "mlflow.xgboost" and xgb.get("data"):
        # The xgboost distribution (xgboost or xgboost-cpu) comes from the model's own requirements.
        return {**base, "loader": "xgboost", "model_file": xgb["data"],
                "model_class": xgb.get("model_class", "xgboost.core.Booster"), "packages": []}
    onnx = flavors.get("onnx", {})
    if loader_module == "mlflow.onnx" and onnx.get("data"):
        # MLflow's pyfunc serves it, unless its graph run as that pyfunc runs it is exact (factory/onnx_graph.py).
        return {**base, "loader": "pyfunc", "model_file": onnx["data"], "model_class": ONNX_MODEL,
                "packages": list(PYFUNC_PACKAGES)}
    return {**base, "loader": "pyfunc", "packages": list(PYFUNC_PACKAGES)}


def pyfunc_only(signature: dict) -> bool:
    """Whether the signature needs MLflow's pyfunc between request and model: params, or a nested column."""
    from factory.fuzz_values import NESTED_TYPES

    return bool(signature.get("params")) or any(spec.get("type") in NESTED_TYPES for spec in signature["inputs"])
