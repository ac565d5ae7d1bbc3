"""`factory manifests` (size from measured memory, validate, write) and `factory deploy` (server-side apply).

Sized manifests live in `<state>/k8s/`: one folder per model, `proxy/`, and a kustomization.yaml
over all of them, so users can overlay per environment with kustomize.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from factory import manifests
from factory.build import BuildRecord, select_models
from factory.catalog import Catalog, ModelSpec
from factory.errors import DeployError, ManifestError
from factory.images import image_registry, proxy_image_ref, proxy_tag
from factory.loader import load_catalog
from factory.routes import routes_yaml
from factory.state import StateDir
from factory.summary import table

Progress = Callable[[str], None]
PROXY_IMAGE_ENV = "FACTORY_PROXY_IMAGE"
FIELD_MANAGER = "model-factory"


@dataclass(frozen=True)
class SizedModel:
    model: str
    route: str
    peak_mib: Optional[float]
    sizing: manifests.Sizing


def manifests_command(catalog_path: Path, names: Iterable[str], everything: bool, proxy: bool,
                      progress: Progress) -> list[SizedModel]:
    catalog = load_catalog(catalog_path)
    state = StateDir.from_env()
    models = select_models(catalog, names, everything) if (names or everything) else []
    if not models and not proxy:
        raise ManifestError("name the models to size, pass --all, or pass --proxy")
    files, sized = {}, []
    for model in models:
        model_files, sizing = _sized_model(catalog, model, state)
        files.update(model_files)
        sized.append(sizing)
    if proxy:
        files.update(_proxy_files(catalog, catalog_path.name, state))
    out = state.manifests_dir()
    existing = {p.relative_to(out).as_posix(): p.read_text(encoding="utf-8") for p in out.rglob("*.yaml")}
    merged = {**existing, **files}
    merged.pop(manifests.KUSTOMIZATION_FILE, None)
    merged[manifests.KUSTOMIZATION_FILE] = manifests.kustomization(catalog.kubernetes, sorted(merged))
    manifests.validate_manifests(merged)  # all of it, before anything is written
    for name, text in sorted({**files, manifests.KUSTOMIZATION_FILE: merged[manifests.KUSTOMIZATION_FILE]}.items()):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if sized:
        progress(sizing_table(sized))
    progress(f"{len(files)} manifests validated (Kubernetes 1.33, strict) and written to {out}")
    return sized


def _sized_model(catalog: Catalog, model: ModelSpec, state: StateDir) -> tuple[dict[str, str], SizedModel]:
    record = BuildRecord.load(state.record(model.name))
    if record is None:
        raise ManifestError(f"{catalog.where(model.name)}: not built yet; run `factory build {model.name}`")
    peak = measured_peak(state, model.name)
    if peak is None and model.resources.memory is None:
        raise ManifestError(f"{catalog.where(model.name)}: memory not measured yet; run `factory test "
                            f"{model.name}` (or set resources.memory in models.yaml)")
    sizing = manifests.sizing_for(model, peak)
    # By digest once pushed: the pod runs exactly the image that was tested; the tag only before that.
    files = manifests.model_manifests(model, catalog.kubernetes, record.image_ref or record.image, sizing)
    peak_mib = round(peak / manifests.MIB, 1) if peak else None
    return files, SizedModel(model.name, model.route, peak_mib, sizing)


def measured_peak(state: StateDir, model: str) -> Optional[int]:
    """The peak `factory test` last measured (what sizing, and so the manifest's limit, come from)."""
    report = state.report_dir(model) / "report.json"
    if not report.is_file():
        return None
    return int(json.loads(report.read_text(encoding="utf-8"))["peak_bytes"])


def _proxy_files(catalog: Catalog, source: str, state: StateDir) -> dict[str, str]:
    image = (os.environ.get(PROXY_IMAGE_ENV) or proxy_image_ref(state)
             or proxy_tag(image_registry(catalog.kubernetes.image_registry)))
    return manifests.proxy_manifests(catalog.kubernetes, image, routes_yaml(catalog, source))


def sizing_table(sized: list[SizedModel]) -> str:
    rows = [[s.model, s.route, f"{s.peak_mib:.0f}" if s.peak_mib else "override", s.sizing.memory_request,
             s.sizing.memory_limit] for s in sized]
    return table(["model", "route", "peak MiB", "memory request", "memory limit"], rows)


def deploy_command(dry_run: bool, skip_without_cluster: bool, progress: Progress) -> int:
    """Server-side apply every manifest under <state>/k8s to the current kubeconfig's cluster."""
    out = StateDir.from_env().manifests_dir()
    documents = _documents(out)
    if not documents:
        raise DeployError(f"no manifests in {out}; run `factory manifests --all --proxy` first")
    client = _cluster_client(skip_without_cluster, progress)
    if client is None:
        return 0
    for document in documents:
        _apply(client, document, dry_run)
        progress(f"{'dry-run ' if dry_run else ''}applied {document['kind']}/{document['metadata']['name']}")
    return len(documents)


def _documents(out: Path) -> list[dict]:
    from factory.k8s_checks import load_documents

    documents = []
    for path in sorted(out.rglob("*.yaml")):
        if path.name != manifests.KUSTOMIZATION_FILE:
            documents += [doc for doc in load_documents(path.read_text(encoding="utf-8")) if doc]
    return documents


def _cluster_client(skip_without_cluster: bool, progress: Progress):
    from kubernetes import config, dynamic
    from kubernetes.client import api_client
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config()
    except (ConfigException, OSError) as exc:
        if skip_without_cluster:
            progress(f"no Kubernetes cluster configured ({exc}); manifests are ready, nothing applied")
            return None
        raise DeployError(f"no Kubernetes cluster configured: {str(exc).rstrip('.')}. Point KUBECONFIG at a cluster "
                          "(or run `factory manifests` only, and apply the kustomization yourself)") from exc
    return dynamic.DynamicClient(api_client.ApiClient())


def _apply(client, document: dict, dry_run: bool) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        resource = client.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        resource.server_side_apply(body=document, name=document["metadata"]["name"],
                                   namespace=document["metadata"].get("namespace"), field_manager=FIELD_MANAGER,
                                   force_conflicts=True, dry_run="All" if dry_run else None)
    except ApiException as exc:
        raise DeployError(f"applying {document['kind']}/{document['metadata']['name']} failed: {exc.status} "
                          f"{exc.reason}: {exc.body}") from exc
