"""The MLflow registry: resolve each catalog entry to one registered version, its signature and flavor.

MLflow exceptions stop here and become RegistryErrors that name the models.yaml entry and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from factory.catalog import Catalog, ModelSpec
from factory.errors import RegistryError
from factory.settings import Settings

REGISTRY_DIR = "registry"
SKOPS_FORMAT = "skops"


@dataclass(frozen=True)
class ResolvedModel:
    """One registered model version, as the build needs it."""

    registered_as: str
    version: int
    run_id: str
    model_uri: str
    signature: dict
    flavor: dict

    @property
    def fingerprint(self) -> str:
        """Changes whenever the registry would hand us different model content."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def tracking_uri(project_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a tracking server), else the project's embedded sqlite registry,
    `registry/mlflow.db` in the directory `factory` runs from (as `make` does), wherever -f points."""
    configured = Settings.from_env().tracking_uri
    if configured:
        return configured
    database = (project_dir / REGISTRY_DIR / "mlflow.db").resolve()
    if not database.is_file():
        raise RegistryError(f"no MLflow registry at {database}: run `make registry` to create the example "
                            "registry, or set MLFLOW_TRACKING_URI to your tracking server")
    return f"sqlite:///{database}"


class Registry:
    def __init__(self, catalog: Catalog, uri: str):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        self.catalog = catalog
        self.uri = uri
        # get_model_info and artifact downloads read the global URIs; unset, MLflow 3 would quietly
        # create an empty sqlite registry in the working directory.
        from mlflow.exceptions import MlflowException

        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            self.client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        except MlflowException as exc:
            raise RegistryError(f"MLflow cannot use the registry at {uri}: {exc.message.split(';')[0]}; set "
                                "MLFLOW_TRACKING_URI to a tracking server, or unset it to use the project's "
                                "registry/mlflow.db") from exc

    def resolve(self, model: ModelSpec) -> ResolvedModel:
        from mlflow.exceptions import MlflowException

        where = self.catalog.where(model.name)
        try:
            version = self._version(model, where)
            info = self._model_info(model.registered_as, version)
        except MlflowException as exc:
            raise RegistryError(f"{where}: the registry at {self.uri} failed: {exc.message}; check "
                                "MLFLOW_TRACKING_URI and that the server is up") from exc
        if info.signature is None or info.signature.inputs is None:
            raise RegistryError(f"{where}: {model.registered_as} version {version} has no input signature; "
                                "log it with `signature=infer_signature(X, y)` and register a new version")
        return ResolvedModel(registered_as=model.registered_as, version=version, run_id=info.run_id or "",
                             model_uri=f"models:/{model.registered_as}/{version}",
                             signature=_signature(info.signature), flavor=_flavor(info.flavors))

    def _version(self, model: ModelSpec, where: str) -> int:
        from mlflow.exceptions import MlflowException

        try:
            if model.alias is not None:
                return int(self.client.get_model_version_by_alias(model.registered_as, model.alias).version)
            return int(self.client.get_model_version(model.registered_as, str(model.version)).version)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise RegistryError(f"{where}: {self._missing(model)}") from exc

    def _missing(self, model: ModelSpec) -> str:
        from mlflow.exceptions import MlflowException

        try:
            registered = self.client.get_registered_model(model.registered_as)
        except MlflowException:
            return (f"no registered model named '{model.registered_as}' in {self.uri}; register it, or set "
                    "`registry_name:` in models.yaml to its registered name")
        versions = sorted(int(v.version) for v in self.client.search_model_versions(f"name='{model.registered_as}'"))
        aliases = sorted(registered.aliases or {})
        wanted = f"alias '{model.alias}'" if model.alias else f"version {model.version}"
        return (f"'{model.registered_as}' has no {wanted}; versions: {', '.join(map(str, versions)) or 'none'}"
                f"; aliases: {', '.join(aliases) or 'none'}. Fix models.yaml or register that version")

    def _model_info(self, name: str, version: int) -> Any:
        import mlflow.models

        return mlflow.models.get_model_info(f"models:/{name}/{version}")


def _signature(signature: Any) -> dict:
    as_dict = signature.to_dict()
    return {"inputs": json.loads(as_dict["inputs"]),
            "outputs": json.loads(as_dict["outputs"]) if as_dict.get("outputs") else None}


def _flavor(flavors: dict) -> dict:
    """How the served model loads: skops directly when the model is a skops-serialized sklearn model."""
    pyfunc = flavors.get("python_function", {})
    sklearn = flavors.get("sklearn", {})
    flavor = {"predict_fn": pyfunc.get("predict_fn", "predict")}
    if sklearn.get("serialization_format") == SKOPS_FORMAT:
        return {**flavor, "loader": "skops", "model_file": sklearn["pickled_model"],
                "trusted_types": sorted(sklearn.get("skops_trusted_types") or [])}
    return {**flavor, "loader": "pyfunc"}
