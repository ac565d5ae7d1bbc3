"""`factory deploy`: server-side apply the manifests `factory manifests` wrote under `<state>/k8s/`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml

from factory.errors import DeployError, StateError
from factory.k8s_checks import KUSTOMIZATION_FILE
from factory.state import StateDir

Progress = Callable[[str], None]
FIELD_MANAGER = "model-factory"


def deploy_command(dry_run: bool, skip_without_cluster: bool, progress: Progress) -> int:
    """Server-side apply every manifest under <state>/k8s to the current kubeconfig's cluster."""
    out = StateDir.from_env().manifests_dir()
    documents = _documents(out) if out.is_dir() else []
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
    from proxy.yamldoc import load_documents

    documents = []
    for path in sorted(out.rglob("*.yaml")):
        if path.name != KUSTOMIZATION_FILE:
            try:
                loaded = load_documents(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                raise StateError(f"{path}: unreadable ({' '.join(str(exc).split())[:300]}); "
                                 "run `factory manifests` again") from exc
            if not all(isinstance(doc, dict) and isinstance(doc.get("metadata"), dict) and "kind" in doc
                       and "apiVersion" in doc for doc in loaded if doc):
                raise StateError(f"{path}: not a Kubernetes manifest (every document needs apiVersion, kind "
                                 "and metadata); run `factory manifests` again")
            documents += [doc for doc in loaded if doc]
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
