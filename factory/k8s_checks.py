"""Offline validation of Kubernetes manifests: strict schemas, then what schemas cannot see.

The schemas are the strict ones bundled with kubernetes-validate (factory/k8s_schemas.py).

The semantic checks only look at documents that passed the schema, so they can rely on its shapes
(though the schemas allow `null` almost everywhere, hence the `or {}`).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Optional

import yaml
from kubernetes.utils import parse_quantity

from factory.errors import ManifestError
from factory.k8s_schemas import schema_dir, schema_findings
from proxy.yamldoc import load_documents

KUSTOMIZATION_FILE = "kustomization.yaml"
KUSTOMIZE_API_VERSION = "kustomize.config.k8s.io/v1beta1"

JsonPath = tuple[Any, ...]
Finding = tuple[JsonPath, str]

# Where each workload kind keeps its pod template.
POD_TEMPLATE_PATHS: dict[str, JsonPath] = {
    **dict.fromkeys(["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"], ("spec", "template")),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
SELECTING_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
CONFIGMAP_MAX_BYTES = 1024 * 1024
REPLICATED_KINDS = {"Deployment", "StatefulSet", "ReplicaSet"}


@dataclass(frozen=True)
class NameRule:
    pattern: re.Pattern[str]
    max_length: int
    description: str

    def problem(self, value: Any) -> Optional[str]:
        if isinstance(value, str) and len(value) <= self.max_length and self.pattern.fullmatch(value):
            return None
        return f"{value!r} is not a valid {self.description}"


_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_LABEL_PART = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
DNS1123_LABEL = NameRule(
    re.compile(_LABEL), 63, "DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)")
DNS1123_SUBDOMAIN = NameRule(
    re.compile(rf"{_LABEL}(?:\.{_LABEL})*"), 253,
    "DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)")
DNS1035_LABEL = NameRule(
    re.compile(r"[a-z](?:[-a-z0-9]*[a-z0-9])?"), 63,
    "DNS-1035 label (lowercase letters, digits and '-', starting with a letter, at most 63 characters)")
LABEL_VALUE = NameRule(
    re.compile(f"(?:{_LABEL_PART})?"), 63,
    "label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)")
LABEL_NAME = NameRule(re.compile(_LABEL_PART), 63, "label name")


@dataclass(frozen=True)
class Manifest:
    """One YAML document of one file, with what is needed to say where a problem is."""

    file: str
    body: Any

    @property
    def kind(self) -> str:
        return str(self.body.get("kind") or "?") if isinstance(self.body, dict) else "?"

    @property
    def name(self) -> str:
        return str(_get(self.body, "metadata", "name") or "?")

    @property
    def namespace(self) -> Any:
        return _get(self.body, "metadata", "namespace")

    def problem(self, path: JsonPath, message: str) -> str:
        return f"{self.file}: {self.kind}/{self.name}: {_json_path(path)}: {message}"


def validate_manifests(files: dict[str, str], k8s_version: str = "1.33") -> None:
    """Raise ManifestError listing every problem in `files` (path → YAML text), one per line, sorted."""
    schemas = schema_dir(k8s_version)
    documents, problems = _parse(files)
    manifests = [doc for doc in documents if not _is_kustomization(doc.file)]
    for kustomization in (doc for doc in documents if _is_kustomization(doc.file)):
        problems += (kustomization.problem(*found) for found in _kustomization_findings(kustomization, files))
    schema_valid = []
    for manifest in manifests:
        findings = list(schema_findings(manifest.body, schemas))
        if not findings:
            schema_valid.append(manifest)
            findings = [found for check in OBJECT_CHECKS for found in check(manifest.body)]
        problems += (manifest.problem(*found) for found in findings)
    problems += _cross_object_problems(manifests, schema_valid)
    if problems:
        raise ManifestError("\n".join(sorted(problems)))


def _parse(files: dict[str, str]) -> tuple[list[Manifest], list[str]]:
    documents: list[Manifest] = []
    problems: list[str] = []
    for file, text in files.items():
        try:
            documents += (Manifest(file, body) for body in load_documents(text) if body is not None)
        except yaml.YAMLError as exc:
            problems.append(Manifest(file, None).problem((), "does not parse as YAML: " + " ".join(str(exc).split())))
    return documents, problems


def _is_kustomization(file: str) -> bool:
    return posixpath.basename(file) == KUSTOMIZATION_FILE


def _json_path(path: JsonPath) -> str:
    parts = ["$"]
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            parts.append(f".{part}")
        else:
            parts.append(f"[{part!r}]")
    return "".join(parts)




# --- checks of one object ------------------------------------------------------------------------

def _get(value: Any, *keys: Any) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _pod_template(body: dict) -> tuple[JsonPath, dict]:
    path = POD_TEMPLATE_PATHS.get(body["kind"])
    return (path, _get(body, *path) or {}) if path else ((), {})


def _name_findings(body: dict) -> Iterator[Finding]:
    rule = {"Service": DNS1035_LABEL, "Namespace": DNS1123_LABEL}.get(body["kind"], DNS1123_SUBDOMAIN)
    checks = [(("metadata", "name"), rule), (("metadata", "namespace"), DNS1123_LABEL)]
    for path, rule in checks:
        value = _get(body, *path)
        if value is not None and (message := rule.problem(value)):
            yield path, message


def _label_maps(body: dict) -> Iterator[tuple[JsonPath, dict]]:
    template_path, template = _pod_template(body)
    yield ("metadata", "labels"), _get(body, "metadata", "labels") or {}
    yield (*template_path, "metadata", "labels"), _get(template, "metadata", "labels") or {}
    yield _selector(body)


def _selector(body: dict) -> tuple[JsonPath, dict]:
    """A Service selects with a plain map; other kinds with a LabelSelector's matchLabels."""
    if body["kind"] == "Service":
        return ("spec", "selector"), _get(body, "spec", "selector") or {}
    return ("spec", "selector", "matchLabels"), _get(body, "spec", "selector", "matchLabels") or {}


def _label_findings(body: dict) -> Iterator[Finding]:
    for path, labels in _label_maps(body):
        for key, value in labels.items():
            prefix, _, name = key.rpartition("/")
            if (prefix and DNS1123_SUBDOMAIN.problem(prefix)) or LABEL_NAME.problem(name):
                yield (*path, key), f"{key!r} is not a valid label key ([DNS-subdomain/]name of at most 63 characters)"
            if message := LABEL_VALUE.problem(value):
                yield (*path, key), message


def _replica_findings(body: dict) -> Iterator[Finding]:
    spec = body.get("spec") or {}
    if body["kind"] in REPLICATED_KINDS and spec.get("replicas") is not None and spec["replicas"] < 0:
        yield ("spec", "replicas"), f"must be at least 0 (got {spec['replicas']})"
    if body["kind"] == "HorizontalPodAutoscaler":
        low, high = spec.get("minReplicas"), spec.get("maxReplicas")
        if low is not None and low < 1:
            yield ("spec", "minReplicas"), (f"must be at least 1 (got {low}); "
                                            "scaling to zero needs an alpha feature gate")
        if high is not None and high < max(low or 1, 1):
            yield ("spec", "maxReplicas"), f"must be at least 1 and at least minReplicas (got {high})"


def _selector_findings(body: dict) -> Iterator[Finding]:
    if body["kind"] not in SELECTING_WORKLOADS:
        return
    path, selector = _selector(body)
    template_path, template = _pod_template(body)
    labels = _get(template, "metadata", "labels") or {}
    if not selector:
        yield path, "must not be empty"
    for key, value in sorted(selector.items()):
        if labels.get(key) != value:
            actual = repr(labels[key]) if key in labels else "no such label"
            yield (*path, key), f"selects {value!r} but the pod template has {actual}"


def _container_findings(body: dict) -> Iterator[Finding]:
    template_path, template = _pod_template(body)
    pod_spec = template.get("spec") or {}
    for group in ("initContainers", "containers"):
        for index, container in enumerate(pod_spec.get(group) or []):
            path = (*template_path, "spec", group, index)
            if message := DNS1123_LABEL.problem(container.get("name")):
                yield (*path, "name"), message
            if message := _image_problem(container.get("image")):
                yield (*path, "image"), message
            yield from _resource_findings(container.get("resources") or {}, (*path, "resources"))


def _image_problem(image: Any) -> Optional[str]:
    if image is None:
        return "image is missing"
    if not image.strip():
        return "image is empty"
    if any(ch.isspace() for ch in image):
        return f"image {image!r} contains whitespace"
    last_component = image.rsplit("/", 1)[-1]
    if "@" not in last_component and (":" not in last_component or last_component.endswith(":")):
        return f"image {image!r} has no tag (pin a tag or a digest)"
    return None


def _resource_findings(resources: dict, path: JsonPath) -> Iterator[Finding]:
    amounts: dict[tuple[str, str], Decimal] = {}
    for section in ("requests", "limits"):
        for resource, value in (resources.get(section) or {}).items():
            amount = _quantity(value)
            if isinstance(amount, str):
                yield (*path, section, resource), amount
            else:
                amounts[section, resource] = amount
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    for resource in sorted(requests):
        request, limit = amounts.get(("requests", resource)), amounts.get(("limits", resource))
        if request is None:
            continue
        where = (*path, "requests", resource)
        if _is_extended(resource) and limit != request:
            yield where, f"extended resource {resource} needs a limit equal to its request"
        elif limit is not None and request > limit:
            yield where, f"request {requests[resource]!r} is above limit {limits[resource]!r}"


def _quantity(value: Any) -> Decimal | str:
    """The parsed quantity, or why it is not one."""
    if not isinstance(value, str):
        return f"quantity must be a quoted string (got {value!r})"
    try:
        amount = parse_quantity(value)
    except (ValueError, ArithmeticError):
        return f"{value!r} is not a valid quantity"
    return amount if amount >= 0 else f"{value!r} is negative"


def _is_extended(resource: str) -> bool:
    """Extended resources (nvidia.com/gpu) and hugepages cannot be overcommitted: request == limit."""
    domain, slash, _ = resource.partition("/")
    native = domain == "kubernetes.io" or domain.endswith(".kubernetes.io")
    return resource.startswith("hugepages-") or (bool(slash) and not native)


def _size_findings(body: dict) -> Iterator[Finding]:
    """The API server refuses a ConfigMap over 1 MiB, and a routing table grows with every model."""
    if body["kind"] != "ConfigMap":
        return
    sections = [body.get("data") or {}, body.get("binaryData") or {}]
    size = sum(len(key.encode()) + len((value or "").encode()) for data in sections for key, value in data.items())
    if size > CONFIGMAP_MAX_BYTES:
        yield ("data",), f"holds {size} bytes; a ConfigMap holds at most {CONFIGMAP_MAX_BYTES}"


OBJECT_CHECKS: tuple[Callable[[dict], Iterable[Finding]], ...] = (
    _name_findings, _label_findings, _replica_findings, _selector_findings, _container_findings, _size_findings,
)


# --- checks across objects -----------------------------------------------------------------------

def _cross_object_problems(manifests: list[Manifest], checked: list[Manifest]) -> Iterator[str]:
    """Duplicates, and Services, budgets and autoscalers that point at nothing in the set.

    Targets are looked up among all objects, so one broken Deployment is not blamed on its Service too.
    """
    seen: dict[tuple[str, Any, str], str] = {}
    for manifest in manifests:
        key = (manifest.kind, manifest.namespace, manifest.name)
        if key in seen:
            yield manifest.problem(("metadata", "name"), f"same kind, namespace and name as in {seen[key]}")
        seen.setdefault(key, manifest.file)
    pods = [(manifest.namespace, _get(_pod_template(manifest.body)[1], "metadata", "labels"))
            for manifest in manifests if manifest.kind in POD_TEMPLATE_PATHS]
    pods = [(namespace, labels) for namespace, labels in pods if isinstance(labels, dict)]
    for manifest in checked:
        if manifest.kind in {"Service", "PodDisruptionBudget"}:
            path, selector = _selector(manifest.body)
            if selector and not any(namespace == manifest.namespace and selector.items() <= labels.items()
                                    for namespace, labels in pods):
                yield manifest.problem(path, "selects no pod template in these manifests")
        if manifest.kind == "HorizontalPodAutoscaler":
            target = _get(manifest.body, "spec", "scaleTargetRef") or {}
            kind, name = target.get("kind"), target.get("name")
            if (kind, manifest.namespace, name) not in seen:
                yield manifest.problem(("spec", "scaleTargetRef"), f"targets {kind}/{name}, not in these manifests")


def _kustomization_findings(kustomization: Manifest, files: dict[str, str]) -> Iterator[Finding]:
    body = kustomization.body
    if not isinstance(body, dict):
        yield (), "is not a mapping"
        return
    if body.get("apiVersion") != KUSTOMIZE_API_VERSION or body.get("kind") != "Kustomization":
        yield (), f"must have apiVersion {KUSTOMIZE_API_VERSION} and kind Kustomization"
    if body.get("namespace") is not None and (message := DNS1123_LABEL.problem(body["namespace"])):
        yield ("namespace",), message
    resources = body.get("resources")
    if not isinstance(resources, list) or not all(isinstance(entry, str) for entry in resources):
        yield ("resources",), "must be a list of file names"
        return
    # Entries are relative to the kustomization's own directory.
    base = posixpath.dirname(kustomization.file)
    listed: set[str] = set()
    for index, entry in enumerate(resources):
        file = posixpath.normpath(posixpath.join(base, entry))
        if file not in files or _is_kustomization(file):
            yield ("resources", index), f"{entry!r} is not one of the manifest files"
        elif file in listed:
            yield ("resources", index), f"{entry!r} is listed twice"
        listed.add(file)
    below = base + "/" if base else ""
    for file in sorted(set(files) - listed):
        if file.startswith(below) and not _is_kustomization(file):
            yield ("resources",), f"does not list {file}"
