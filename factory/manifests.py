"""`factory manifests` (size from measured memory, validate, write to `<state>/k8s/`), and the
Kubernetes manifests for every model and for the proxy, rendered from templates/k8s.

Sized manifests: one folder per model, `proxy/`, and a kustomization.yaml over all of them, so users
can overlay per environment with kustomize.

Templates write the YAML. This module decides the numbers (memory sizing, resource quantities) and
hands the templates two filters, `q` and `literal_block`, so that every inserted value stays one
scalar: a catalog name such as `null` or a registry ref such as `@champion` can never change types
or the document's structure.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import jinja2
import yaml
from kubernetes.utils import parse_quantity

from factory import atomic
from factory.autoscaling import autoscaling_for
from factory.capacity import capacity_cell
from factory.catalog import Catalog, KubernetesSettings, ModelSpec, Resources
from factory.errors import ManifestError, RenderError, StateError
from factory.images import image_registry, proxy_image_ref, proxy_tag
from factory.k8s_checks import KUSTOMIZATION_FILE, validate_manifests
from factory.loader import load_catalog, select_models
from factory.routes import routes_shards
from factory.settings import Settings
from factory.state import CapacityReport, StateDir
from factory.tables import table

__all__ = ["Sizing", "sizing_for", "model_manifests", "proxy_manifests", "kustomization", "validate_manifests",
           "manifests_command"]

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "k8s"
MIB = 1024**2
# Before a model has been measured its manifests still need a request; this one fits the
# ~0.3-0.5 GiB a served sklearn model was measured at, and sizing replaces it later.
DEFAULT_MEMORY_REQUEST_BYTES = 512 * MIB

MODEL_MANIFESTS = {"deployment": "model-deployment", "service": "service", "hpa": "model-hpa", "pdb": "model-pdb"}
PROXY_MANIFESTS = {"deployment": "proxy-deployment", "service": "service"}  # + routes-NNN.yaml ConfigMaps
PROXY_DIR = "proxy"
PROXY_NAME = "model-factory-proxy"
# One worker under its default buffer budget (proxy --max-buffered-bytes, 32 MiB) peaked at 210-255 MiB with 16
# clients of 8 MiB answers (bench/proxy_memory.py): 256Mi left 1 MiB at worst, and an OOM kill fails every request
# in flight. 384Mi is 1.5x the worst peak measured. The request stays what an idle proxy needs to be scheduled.
PROXY_MEMORY_LIMIT = "384Mi"
PROXY_PORT = 8000
ROUTES_DIR = "/etc/model-factory"

Progress = Callable[[str], None]
PART_OF = {"app.kubernetes.io/part-of": "model-factory", "app.kubernetes.io/managed-by": "model-factory"}
MODEL_LABEL = "model-factory/model"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Sizing:
    """Memory for one model's container, as Kubernetes quantities."""

    memory_request: str
    memory_limit: str


def sizing_for(model: ModelSpec, measured_peak_bytes: int | None) -> Sizing:
    """The catalog's override wins; else the measured peak plus headroom; else a default.

    Exact fractions, not floats: a float product can land a byte under the peak it was meant to cover.
    """
    resources = model.resources
    request = resources.memory or _whole_mebibytes(_request_bytes(resources, measured_peak_bytes))
    limit_bytes = Fraction(parse_quantity(request)) * _decimal(resources.memory_limit_factor)
    return Sizing(memory_request=request, memory_limit=_whole_mebibytes(limit_bytes))


def _request_bytes(resources: Resources, measured_peak_bytes: int | None) -> Fraction:
    if measured_peak_bytes is None:
        return Fraction(DEFAULT_MEMORY_REQUEST_BYTES)
    if measured_peak_bytes < 1:
        raise ValueError(f"a measured memory peak must be a positive number of bytes, got {measured_peak_bytes}")
    return measured_peak_bytes * (1 + _decimal(resources.memory_headroom))


def _decimal(value: float) -> Fraction:
    """The fraction the user wrote (0.2 is 1/5), not the binary float nearest to it."""
    return Fraction(str(value))


def _whole_mebibytes(n_bytes: Fraction) -> str:
    return f"{math.ceil(n_bytes / MIB)}Mi"


def model_manifests(model: ModelSpec, settings: KubernetesSettings, image: Optional[str], sizing: Sizing,
                    capacity: Optional[CapacityReport] = None) -> dict[str, str]:
    """Deployment, Service, HorizontalPodAutoscaler (its target from the measured capacity) and
    PodDisruptionBudget of one model (`image` None: the preview `factory render` writes, whose Deployment
    has no image)."""
    name = model.k8s_name
    labels = {"app.kubernetes.io/name": name, MODEL_LABEL: name, **PART_OF}
    context = {
        "name": name,
        "namespace": settings.namespace,
        "labels": labels,
        "selector": {MODEL_LABEL: name},
        "annotations": {"model-factory/registry-ref": model.registry_ref, "model-factory/route": model.route},
        "model": model,
        "autoscaling": autoscaling_for(model, capacity),
        "image": image,
        "pull_secrets": settings.image_pull_secrets,
        "port": settings.service_port,
        **_container_resources(model.resources, sizing),
    }
    return _render_all(name, MODEL_MANIFESTS, context)


def _container_resources(resources: Resources, sizing: Sizing) -> dict[str, dict[str, str]]:
    # No CPU limit: throttling a model server at its limit only adds latency; the request drives
    # scheduling and the HPA's utilization figure.
    gpus = {GPU_RESOURCE: str(resources.gpu)} if resources.gpu else {}
    return {
        "requests": {"cpu": resources.cpu, "memory": sizing.memory_request, **gpus},
        "limits": {"memory": sizing.memory_limit, **gpus},
    }


def proxy_manifests(settings: KubernetesSettings, image: Optional[str], routes_shards: list[str]) -> dict[str, str]:
    """Deployment, Service and one routing-table ConfigMap per shard (factory.routes.routes_shards)."""
    shards = {f"{PROXY_NAME}-routes-{index:03d}": text for index, text in enumerate(routes_shards)}
    context = {
        "name": PROXY_NAME,
        "namespace": settings.namespace,
        "labels": {"app.kubernetes.io/name": PROXY_NAME, "app.kubernetes.io/component": "proxy", **PART_OF},
        # Model pods never carry component=proxy, so this cannot select one whatever a model is called.
        "selector": {"app.kubernetes.io/name": PROXY_NAME, "app.kubernetes.io/component": "proxy"},
        "image": image,
        "pull_secrets": settings.image_pull_secrets,
        "port": PROXY_PORT,
        "configmaps": {name: f"{name.removeprefix(PROXY_NAME + '-')}.yaml" for name in shards},
        "routes_dir": ROUTES_DIR,
        "routes_checksum": "sha256:" + hashlib.sha256("\0".join(routes_shards).encode()).hexdigest(),
        "memory_limit": PROXY_MEMORY_LIMIT,
    }
    files = _render_all(PROXY_DIR, PROXY_MANIFESTS, context)
    for name, text in shards.items():
        files[f"{PROXY_DIR}/{context['configmaps'][name]}"] = _render(
            "proxy-configmap", {**context, "configmap_name": name, "routes_key": context["configmaps"][name],
                                "routes_yaml": text})
    return files


def kustomization(settings: KubernetesSettings, files: list[str]) -> str:
    """kustomization.yaml listing every manifest file once, sorted, in the settings' namespace."""
    resources = sorted({file for file in files if posixpath.basename(file) != KUSTOMIZATION_FILE})
    return _render("kustomization", {"namespace": settings.namespace, "files": resources})


def _render_all(directory: str, templates: dict[str, str], context: dict[str, Any]) -> dict[str, str]:
    return {f"{directory}/{file}.yaml": _render(template, context) for file, template in templates.items()}


def _render(template: str, context: dict[str, Any]) -> str:
    # Not parsed back here: at thousands of models that doubles render time. validate_manifests
    # parses and checks everything before `factory manifests` writes it, and tests cover render.
    try:
        return _environment().get_template(f"{template}.yaml.j2").render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"templates/k8s/{template}.yaml.j2: {exc}") from exc


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["q"] = _quoted
    environment.filters["literal_block"] = _literal_block
    return environment


def _quoted(value: str | int) -> str:
    """A double-quoted YAML scalar that parses back to exactly str(value), whatever it contains."""
    text = str(value)
    if text.isascii() and text.isprintable():
        return json.dumps(text)  # the same scalar for printable ASCII, ~50x faster than yaml.dump
    return yaml.dump(text, default_style='"', width=math.inf, allow_unicode=False).rstrip("\n")


def _literal_block(text: str, indent: int) -> str:
    """`text` as a `|` block whose lines start at column `indent`, if it reads back unchanged as one.

    A block keeps a routing table reviewable in diffs. It is only faithful for text with exactly one
    final newline, a first line that is neither empty nor indented (block indentation is detected
    from it), no trailing blanks and nothing but printable ASCII; anything else is written quoted.
    """
    lines = text.split("\n")[:-1]
    faithful = (
        text.endswith("\n")
        and not text.endswith("\n\n")
        and not text.startswith((" ", "\n"))
        and all(line == line.rstrip() and all(" " <= ch <= "~" for ch in line) for line in lines)
    )
    if not faithful:
        return _quoted(text)
    return "|\n" + "\n".join(" " * indent + line if line else "" for line in lines)


# --- `factory manifests`: size from measured memory, validate everything, then write ---------------


@dataclass(frozen=True)
class SizedModel:
    model: str
    route: str
    peak_mib: Optional[float]
    sizing: Sizing
    capacity: str  # capacity_cell
    target: str  # the HPA's CPU target and where it comes from


def manifests_command(catalog_path: Path, names: Iterable[str], everything: bool, proxy: bool,
                      progress: Progress, allow_failed: bool = False) -> list[SizedModel]:
    catalog = load_catalog(catalog_path)
    state = StateDir.from_env()
    models = select_models(catalog, names, everything) if (names or everything) else []
    if not models and not proxy:
        raise ManifestError("name the models to size, pass --all, or pass --proxy")
    if not allow_failed:
        _refuse_untested(models, state)
    files, sized = {}, []
    for model in models:
        model_files, sizing = _sized_model(catalog, model, state)
        files.update(model_files)
        sized.append(sizing)
    if proxy:
        files.update(_proxy_files(catalog, catalog_path.name, state))
    out = state.manifests_dir()
    on_disk = _on_disk(out)
    existing = {name: _written(out / name, data) for name, data in on_disk.items() if name.endswith(".yaml")}
    if proxy:  # written whole: fewer shards than last time must not leave stale ConfigMaps behind
        existing = {name: text for name, text in existing.items() if not name.startswith(f"{PROXY_DIR}/")}
    merged = {**existing, **files}
    merged.pop(KUSTOMIZATION_FILE, None)
    merged[KUSTOMIZATION_FILE] = kustomization(catalog.kubernetes, sorted(merged))
    validate_manifests(merged)  # all of it, before anything is written
    kept = {name: data for name, data in on_disk.items()
            if not name.endswith(".yaml") and not (proxy and name.startswith(f"{PROXY_DIR}/"))}
    tree = {**kept, **{name: text.encode("utf-8") for name, text in merged.items()}}
    if tree != on_disk:  # one swap of the whole directory: a failure part-way leaves the previous manifests
        atomic.replace_tree(out, tree, "the manifests", atomic.IN_STATE)
    if sized:
        progress(sizing_table(sized))
    progress(f"{len(files)} manifests validated (Kubernetes 1.33, strict) and written to {out}")
    return sized


def _on_disk(out: Path) -> dict[str, bytes]:
    """Every file under `out` (the manifests a run keeps, and anything a user put beside them)."""
    try:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    except OSError as exc:
        raise StateError(f"{exc.filename or out}: unreadable ({exc.strerror or exc}); delete it and run "
                         "`factory manifests` again") from exc


def _written(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateError(f"{path}: unreadable ({type(exc).__name__}); delete it and run `factory manifests` "
                         "again") from exc


def _sized_model(catalog: Catalog, model: ModelSpec, state: StateDir) -> tuple[dict[str, str], SizedModel]:
    record = state.build_record(model.name)
    if record is None:
        raise ManifestError(f"{catalog.where(model.name)}: not built yet; run `factory build {model.name}`")
    peak = measured_peak(state, model.name)
    if peak is None and model.resources.memory is None:
        raise ManifestError(f"{catalog.where(model.name)}: memory not measured yet; run `factory test "
                            f"{model.name}` (or set resources.memory in models.yaml)")
    sizing = sizing_for(model, peak)
    # By digest once pushed: the pod runs exactly the image that was tested; the tag only before that.
    report = state.test_report(model.name)
    capacity = report.capacity if report else None
    files = model_manifests(model, catalog.kubernetes, record.image_ref or record.image, sizing, capacity)
    peak_mib = round(peak / MIB, 1) if peak else None
    scaling = autoscaling_for(model, capacity)
    return files, SizedModel(model.name, model.route, peak_mib, sizing, capacity_cell(capacity),
                             f"{scaling.target_cpu_percent} % ({scaling.source})")


def _refuse_untested(models: list[ModelSpec], state: StateDir) -> None:
    """Manifests only for models whose last `factory test` passed, and tested what is built and declared now: a
    failed one must not be deployed, nor one sized and scaled from a test of another build or objective."""
    verdicts = {model.name: last_test(state, model) for model in models}
    refused = sorted(name for name, verdict in verdicts.items() if verdict != "passed")
    if refused:
        listed = ", ".join(f"{name} ({verdicts[name]})" for name in refused)
        raise ManifestError(f"refusing to write manifests for models whose last test did not pass or no longer "
                            f"applies: {listed}; run `factory test {' '.join(refused)}` and fix them, or pass "
                            "--allow-failed")


def last_test(state: StateDir, model: ModelSpec) -> str:
    """"passed", or why the last test does not vouch for the model as built and declared now."""
    report = state.test_report(model.name)
    if report is None:
        return "not tested"
    if not report.passed:
        return "failed"
    record = state.build_record(model.name)
    if record is not None and report.bento_tag and report.bento_tag != record.bento_tag:
        return f"tested {report.bento_tag}, built since as {record.bento_tag}"
    capacity = report.capacity
    if capacity is not None and capacity.slo_p99_ms != model.slo.p99_ms:
        return f"tested against slo.p99_ms {capacity.slo_p99_ms}, models.yaml now says {model.slo.p99_ms}"
    if capacity is not None and capacity.cpu_request is not None and \
            Resources(cpu=capacity.cpu_request).cores != model.resources.cores:
        return f"tested with resources.cpu {capacity.cpu_request}, models.yaml now says {model.resources.cpu}"
    return "passed"


def measured_peak(state: StateDir, model: str) -> Optional[int]:
    """The peak `factory test` last measured (what sizing, and so the manifest's limit, come from)."""
    report = state.test_report(model)
    return report.peak_bytes if report and report.peak_bytes else None


def _proxy_files(catalog: Catalog, source: str, state: StateDir) -> dict[str, str]:
    settings = Settings.from_env()
    image = settings.proxy_image or proxy_image_ref(state) or proxy_tag(image_registry(catalog.kubernetes.image_registry))
    return proxy_manifests(catalog.kubernetes, image, routes_shards(catalog, source))


def sizing_table(sized: list[SizedModel]) -> str:
    rows = [[s.model, s.route, f"{s.peak_mib:.0f}" if s.peak_mib else "override", s.sizing.memory_request,
             s.sizing.memory_limit, s.capacity, s.target] for s in sized]
    return table(["model", "route", "peak MiB", "memory request", "memory limit", "capacity rps", "HPA cpu target"],
                 rows)
