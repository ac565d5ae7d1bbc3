"""Kubernetes manifests: sizing, rendering, and offline validation against strict 1.33 schemas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity

from factory.catalog import (ALIAS_PATTERN, CPU_PATTERN, GPU_TYPE_PATTERN, MEMORY_PATTERN, NAME_PATTERN,
                             SEGMENT_PATTERN, KubernetesSettings, ModelSpec)
from factory.errors import ManifestError
from factory.state import CapacityReport, CapacityStep
from factory.manifests import Sizing, kustomization, model_manifests, proxy_manifests, sizing_for, validate_manifests
from proxy.settings import ProxySettings

REPO = Path(__file__).resolve().parent.parent
SETTINGS = KubernetesSettings()
IMAGE = "registry.example.com/model-factory/iris:1.0"
DEPLOYMENT = "iris/deployment.yaml"
CONTAINER = "$.spec.template.spec.containers[0]"
MIB = 1024**2


def spec(**fields: Any) -> ModelSpec:
    reference = {} if "alias" in fields else {"version": 1}
    return ModelSpec.model_validate({"name": "iris", "endpoint": "iris", **reference, **fields})


def rendered(model: ModelSpec, peak: int | None = None) -> dict[str, str]:
    return model_manifests(model, SETTINGS, IMAGE, sizing_for(model, peak))


def parsed(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


def problems(files: dict[str, str]) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        validate_manifests(files)
    return str(caught.value).splitlines()


# --- sizing --------------------------------------------------------------------------------------

@pytest.mark.parametrize("resources, peak, expected", [
    ({}, None, Sizing("512Mi", "768Mi")),
    ({}, 100 * MIB, Sizing("120Mi", "180Mi")),
    ({}, 1, Sizing("1Mi", "2Mi")),
    ({"memory_headroom": 0, "memory_limit_factor": 1}, 100 * MIB + 1, Sizing("101Mi", "101Mi")),
    ({"memory": "2Gi"}, 5 * 1024 * MIB, Sizing("2Gi", "3072Mi")),
    ({"memory": "1G", "memory_limit_factor": 2}, None, Sizing("1G", "1908Mi")),
])
def test_sizing(resources: dict, peak: int | None, expected: Sizing) -> None:
    assert sizing_for(spec(resources=resources), peak) == expected


def test_sizing_rejects_a_peak_that_was_not_measured() -> None:
    with pytest.raises(ValueError, match="positive number of bytes"):
        sizing_for(spec(), 0)


# --- rendering -----------------------------------------------------------------------------------

def test_model_manifest_files_and_kinds() -> None:
    files = rendered(spec())
    kinds = {file: parsed(text)["kind"] for file, text in files.items()}
    assert kinds == {"iris/deployment.yaml": "Deployment", "iris/service.yaml": "Service",
                     "iris/hpa.yaml": "HorizontalPodAutoscaler", "iris/pdb.yaml": "PodDisruptionBudget"}
    assert all(parsed(text)["metadata"]["namespace"] == "model-factory" for text in files.values())


def test_deployment_carries_what_the_cluster_needs() -> None:
    model = spec(name="Iris_v2", alias="champion", parameters=["eu", "v2"], resources={"cpu": "500m"})
    pod = parsed(rendered(model)["iris-v2/deployment.yaml"])["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert pod["metadata"]["annotations"] == {"model-factory/registry-ref": "@champion",
                                              "model-factory/route": "/iris/eu/v2"}
    assert pod["metadata"]["labels"]["model-factory/model"] == "iris-v2"
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "768Mi"}}
    assert {"name": "BENTOML_DO_NOT_TRACK", "value": "true"} in container["env"]
    assert container["securityContext"]["runAsUser"] == 1034
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert "tolerations" not in pod["spec"] and "nodeSelector" not in pod["spec"]


@pytest.mark.parametrize("name", ["null", "yes", "on", "true", "off"])
def test_yaml_keywords_stay_strings(name: str) -> None:
    files = rendered(spec(name=name, resources={"gpu": 1, "gpu_type": "1e3"}))
    deployment = parsed(files[f"{name}/deployment.yaml"])
    assert deployment["metadata"]["name"] == name
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "1e3"}
    validate_manifests(files)


def test_min_replicas_zero_parks_the_model() -> None:
    files = rendered(spec(scaling={"min_replicas": 0, "max_replicas": 2}))
    assert parsed(files[DEPLOYMENT])["spec"]["replicas"] == 0
    assert parsed(files["iris/hpa.yaml"])["spec"]["minReplicas"] == 1
    validate_manifests(files)


def test_proxy_manifests_mount_every_shard_and_roll_on_change() -> None:
    shards = ["version: 1\nroutes: []\n", "version: 1\nroutes: [b]\n"]
    files = proxy_manifests(SETTINGS, "registry.example.com/model-factory/proxy:1", shards)
    deployment = parsed(files["proxy/deployment.yaml"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "proxy", "--routes", "/etc/model-factory",
                                 "--host", "0.0.0.0", "--port", "8000", "--drain-timeout-s", "20"]
    # The kubelet's SIGKILL must come after the preStop sleep and the proxy's whole drain time.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop + 20
    # The command sets no --upstream-timeout-s: every forwarded request ends (answered or 504) within the drain.
    assert "--upstream-timeout-s" not in container["command"]
    assert ProxySettings.model_fields["upstream_timeout_s"].default < 20
    # One worker under its buffer budget peaked at 210-255 MiB (bench/proxy_memory.py); the limit leaves room.
    assert "--workers" not in container["command"] and container["resources"]["limits"]["memory"] == "384Mi"
    assert container["volumeMounts"][0]["mountPath"] == "/etc/model-factory"
    assert [source["configMap"] for source in deployment["spec"]["template"]["spec"]["volumes"][0]["projected"]
            ["sources"]] == [{"name": f"model-factory-proxy-routes-00{i}", "items": [
                {"key": f"routes-00{i}.yaml", "path": f"routes-00{i}.yaml"}]} for i in (0, 1)]
    assert parsed(files["proxy/routes-000.yaml"])["data"] == {"routes-000.yaml": shards[0]}
    assert parsed(files["proxy/routes-001.yaml"])["data"] == {"routes-001.yaml": shards[1]}
    other = proxy_manifests(SETTINGS, "registry.example.com/model-factory/proxy:1", [shards[0], "routes: [x]\n"])
    checksum = "model-factory/routes-checksum"
    assert (parsed(other["proxy/deployment.yaml"])["spec"]["template"]["metadata"]["annotations"][checksum]
            != deployment["spec"]["template"]["metadata"]["annotations"][checksum])
    validate_manifests(files)


def test_image_pull_secrets_reach_every_pod() -> None:
    settings = KubernetesSettings(image_pull_secrets=["gitlab-registry", "mirror.example"])
    model = model_manifests(spec(), settings, IMAGE, sizing_for(spec(), None))
    proxy = proxy_manifests(settings, "registry.example.com/model-factory/proxy:1", ["version: 1\nroutes: []\n"])
    for files, deployment in ((model, DEPLOYMENT), (proxy, "proxy/deployment.yaml")):
        pod = parsed(files[deployment])["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "gitlab-registry"}, {"name": "mirror.example"}]
        validate_manifests(files)
    assert "imagePullSecrets" not in parsed(rendered(spec())[DEPLOYMENT])["spec"]["template"]["spec"]


# Mostly text that a `|` block can hold, near its edges: indentation, blank lines, YAML indicators.
yamlish_lines = st.lists(st.text(alphabet=" ab:-#|>'\"\t\\", max_size=6), max_size=6).map("\n".join)
routes_texts = st.one_of(st.text(), st.builds(str.__add__, yamlish_lines, st.sampled_from(["", "\n", "\n\n"])))


@settings(max_examples=300, deadline=None)
@given(routes_texts)
def test_routes_text_reads_back_unchanged(routes: str) -> None:
    files = proxy_manifests(SETTINGS, "proxy:1", [routes])
    assert parsed(files["proxy/routes-000.yaml"])["data"]["routes-000.yaml"] == routes


def test_kustomization_lists_every_file_once_sorted() -> None:
    files = {**rendered(spec()), **proxy_manifests(SETTINGS, "proxy:1", ["routes: []\n"])}
    text = kustomization(SETTINGS, [*reversed(list(files)), DEPLOYMENT, "kustomization.yaml"])
    body = parsed(text)
    assert body["namespace"] == "model-factory"
    assert body["resources"] == sorted(files)
    validate_manifests({**files, "kustomization.yaml": text})


def test_render_is_byte_identical_under_another_hash_seed() -> None:
    script = ("import sys; from tests.test_manifests import full_set; "
              "sys.stdout.write(repr(sorted(full_set().items())))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                           check=True).stdout
    assert other == repr(sorted(full_set().items()))


def full_set() -> dict[str, str]:
    files = {**rendered(spec(resources={"gpu": 2, "gpu_type": "nvidia-tesla-t4"})),
             **proxy_manifests(SETTINGS, "proxy:1", ["routes: []\n"])}
    return {**files, "kustomization.yaml": kustomization(SETTINGS, list(files))}


# --- validation: one planted mistake each --------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def container(docs: dict[str, Any]) -> dict[str, Any]:
    return docs[DEPLOYMENT]["spec"]["template"]["spec"]["containers"][0]


def planted(mutate: Mutation) -> dict[str, str]:
    docs = {file: parsed(text) for file, text in rendered(spec()).items()}
    mutate(docs)
    return {file: yaml.safe_dump(doc) for file, doc in docs.items()}


def setting(path: str, value: Any) -> Mutation:
    def mutate(docs: dict[str, Any]) -> None:
        file, *keys, last = path.split(":")
        target = docs[file]
        for key in keys:
            target = target[int(key)] if key.isdigit() else target[key]
        target[last] = value
    return mutate


CONTAINER_KEYS = f"{DEPLOYMENT}:spec:template:spec:containers:0"
WIDGET = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
SUBDOMAIN = ("is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253 "
             "characters)")

PLANTED = {
    "unparseable quantity": (
        setting(f"{CONTAINER_KEYS}:resources:limits:memory", "12QB"),
        [f"{DEPLOYMENT}: Deployment/iris: {CONTAINER}.resources.limits.memory: '12QB' is not a valid quantity"]),
    "quantity as a number": (
        setting(f"{CONTAINER_KEYS}:resources:requests:cpu", 1),
        [f"{DEPLOYMENT}: Deployment/iris: {CONTAINER}.resources.requests.cpu: "
         "quantity must be a quoted string (got 1)"]),
    "missing image": (
        lambda docs: container(docs).pop("image"),
        [f"{DEPLOYMENT}: Deployment/iris: {CONTAINER}.image: image is missing"]),
    "image without tag": (
        setting(f"{CONTAINER_KEYS}:image", "registry.example.com:5000/iris"),
        [f"{DEPLOYMENT}: Deployment/iris: {CONTAINER}.image: "
         "image 'registry.example.com:5000/iris' has no tag (pin a tag or a digest)"]),
    "negative replicas": (
        setting(f"{DEPLOYMENT}:spec:replicas", -1),
        [f"{DEPLOYMENT}: Deployment/iris: $.spec.replicas: must be at least 0 (got -1)"]),
    "request above limit": (
        setting(f"{CONTAINER_KEYS}:resources:requests:memory", "2Gi"),
        [f"{DEPLOYMENT}: Deployment/iris: {CONTAINER}.resources.requests.memory: "
         "request '2Gi' is above limit '768Mi'"]),
    "gpu request without limit": (
        setting(f"{CONTAINER_KEYS}:resources:requests:nvidia.com/gpu", "1"),
        [f"{DEPLOYMENT}: Deployment/iris: {CONTAINER}.resources.requests['nvidia.com/gpu']: "
         "extended resource nvidia.com/gpu needs a limit equal to its request"]),
    "selector mismatch": (
        setting(f"{DEPLOYMENT}:spec:selector:matchLabels:model-factory/model", "other"),
        [f"{DEPLOYMENT}: Deployment/iris: $.spec.selector.matchLabels['model-factory/model']: "
         "selects 'other' but the pod template has 'iris'"]),
    "bad deployment name": (
        setting(f"{DEPLOYMENT}:metadata:name", "Iris_1"),
        [f"{DEPLOYMENT}: Deployment/Iris_1: $.metadata.name: 'Iris_1' {SUBDOMAIN}",
         "iris/hpa.yaml: HorizontalPodAutoscaler/iris: $.spec.scaleTargetRef: "
         "targets Deployment/iris, not in these manifests"]),
    "service name not a DNS-1035 label": (
        setting("iris/service.yaml:metadata:name", "1iris"),
        ["iris/service.yaml: Service/1iris: $.metadata.name: '1iris' is not a valid DNS-1035 label "
         "(lowercase letters, digits and '-', starting with a letter, at most 63 characters)"]),
    "bad label value": (
        setting("iris/pdb.yaml:metadata:labels:team", "data science"),
        ["iris/pdb.yaml: PodDisruptionBudget/iris: $.metadata.labels.team: 'data science' is not a valid "
         "label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"]),
    "service selects nothing": (
        setting("iris/service.yaml:spec:selector:model-factory/model", "iri"),
        ["iris/service.yaml: Service/iris: $.spec.selector: selects no pod template in these manifests"]),
    "hpa minimum zero": (
        setting("iris/hpa.yaml:spec:minReplicas", 0),
        ["iris/hpa.yaml: HorizontalPodAutoscaler/iris: $.spec.minReplicas: "
         "must be at least 1 (got 0); scaling to zero needs an alpha feature gate"]),
    "unknown kind": (
        lambda docs: docs.update({"extra/widget.yaml": WIDGET}),
        ["extra/widget.yaml: Widget/w: $: no schema for kind 'Widget' with apiVersion 'example.com/v1' "
         "in v1.33.0-local-strict"]),
    "schema violation": (
        setting(f"{CONTAINER_KEYS}:imagePullPolicy", 3),
        [f"{DEPLOYMENT}: Deployment/iris: {CONTAINER}.imagePullPolicy: 3 is not of type 'string', 'null'"]),
    "unknown field": (
        setting(f"{CONTAINER_KEYS}:memory", "1Gi"),
        [f"{DEPLOYMENT}: Deployment/iris: {CONTAINER}: Additional properties are not allowed "
         "('memory' was unexpected)"]),
}


def test_oversized_routing_table() -> None:
    files = proxy_manifests(SETTINGS, "proxy:1", ["x" * 1024 * 1024 + "\n"])
    assert problems(files) == ["proxy/routes-000.yaml: ConfigMap/model-factory-proxy-routes-000: $.data: "
                               "holds 1048592 bytes; a ConfigMap holds at most 1048576"]


@pytest.mark.parametrize("mutate, expected", PLANTED.values(), ids=PLANTED.keys())
def test_planted_mistake_is_reported_exactly(mutate: Mutation, expected: list[str]) -> None:
    assert problems(planted(mutate)) == expected


def test_every_problem_is_listed_sorted() -> None:
    def two_mistakes(docs: dict[str, Any]) -> None:
        setting(f"{DEPLOYMENT}:spec:replicas", -1)(docs)
        container(docs)["image"] = ""
    assert problems(planted(two_mistakes)) == [
        f"{DEPLOYMENT}: Deployment/iris: $.spec.replicas: must be at least 0 (got -1)",
        f"{DEPLOYMENT}: Deployment/iris: {CONTAINER}.image: image is empty",
    ]


def test_yaml_that_does_not_parse_or_is_not_json_shaped() -> None:
    found = problems({"a.yaml": "kind: [", "b.yaml": "kind: Service\nkind: Service\n", "c.yaml": "1: x\n"})
    assert [line.split(": does not parse")[0] for line in found] == ["a.yaml: ?/?: $", "b.yaml: ?/?: $",
                                                                      "c.yaml: ?/?: $"]
    assert "duplicate key 'kind'" in found[1]
    assert "non-string key 1" in found[2]


def test_kustomization_is_checked_structurally() -> None:
    files = rendered(spec())
    listed = sorted(files)[1:] + ["missing.yaml", sorted(files)[1]]
    text = yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                           "resources": listed})
    assert problems({**files, "kustomization.yaml": text}) == [
        "kustomization.yaml: Kustomization/?: $.resources: does not list iris/deployment.yaml",
        "kustomization.yaml: Kustomization/?: $.resources[3]: 'missing.yaml' is not one of the manifest files",
        "kustomization.yaml: Kustomization/?: $.resources[4]: 'iris/hpa.yaml' is listed twice",
    ]


def test_unsupported_kubernetes_version() -> None:
    with pytest.raises(ManifestError, match="no strict schemas for Kubernetes '1.99'"):
        validate_manifests(rendered(spec()), k8s_version="1.99")


# --- properties over generated catalogs ----------------------------------------------------------

def _nonzero(quantity: str) -> bool:
    return any(ch in "123456789" for ch in quantity.rstrip("KMGTikm"))


cpus = st.from_regex(CPU_PATTERN, fullmatch=True).filter(_nonzero)
memories = st.from_regex(MEMORY_PATTERN, fullmatch=True).filter(_nonzero)
gpu_types = st.from_regex(GPU_TYPE_PATTERN, fullmatch=True)
some_gpus = st.integers(1, 4).flatmap(
    lambda gpu: st.one_of(st.just({"gpu": gpu}), st.builds(lambda kind: {"gpu": gpu, "gpu_type": kind}, gpu_types)))
any_gpus = st.one_of(st.just({"gpu": 0}), some_gpus)
scalings = st.integers(0, 20).flatmap(lambda low: st.fixed_dictionaries({
    "min_replicas": st.just(low),
    "max_replicas": st.integers(max(low, 1), 40),
    "target_cpu_percent": st.one_of(st.none(), st.integers(1, 100)),
}))
capacities = st.one_of(st.none(), st.builds(
    lambda rps, cpu: CapacityReport(slo_p99_ms=100, rps=rps, connections=4, p99_ms=50.0, cpu_percent=cpu, steps=[
        CapacityStep(connections=4, requests=10, rps=rps, p50_ms=1.0, p99_ms=50.0, shed=0, failures=0,
                     statuses={"200": 10}, cpu_percent=cpu)]),
    st.floats(0, 1e5), st.one_of(st.none(), st.floats(0, 400))))


@st.composite
def model_specs(draw: st.DrawFn, gpus: st.SearchStrategy[dict] = any_gpus,
                with_memory_override: bool = True) -> ModelSpec:
    resources = {
        **draw(gpus),
        "cpu": draw(cpus),
        "memory_headroom": draw(st.floats(0, 10)),
        "memory_limit_factor": draw(st.floats(1, 10)),
    }
    if with_memory_override and draw(st.booleans()):
        resources["memory"] = draw(memories)
    reference = draw(st.one_of(st.builds(lambda v: {"version": v}, st.integers(1, 10**6)),
                               st.builds(lambda a: {"alias": a}, st.from_regex(ALIAS_PATTERN, fullmatch=True))))
    return ModelSpec.model_validate({
        "name": draw(st.from_regex(NAME_PATTERN, fullmatch=True)),
        "endpoint": draw(st.from_regex(SEGMENT_PATTERN, fullmatch=True)),
        "parameters": draw(st.lists(st.from_regex(SEGMENT_PATTERN, fullmatch=True), max_size=3)),
        "resources": resources,
        "scaling": draw(scalings),
        **reference,
    })


peaks = st.one_of(st.none(), st.integers(1, 2**40))
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(model_specs(), peaks, capacities)
def test_generated_models_validate_and_render_identically(model: ModelSpec, peak: int | None,
                                                          capacity: CapacityReport | None) -> None:
    sizing = sizing_for(model, peak)
    files = model_manifests(model, SETTINGS, IMAGE, sizing, capacity)
    validate_manifests(files)
    assert model_manifests(model, SETTINGS, IMAGE, sizing, capacity) == files
    assert parse_quantity(sizing.memory_limit) >= parse_quantity(sizing.memory_request)


@PROPERTY
@given(model_specs(with_memory_override=False), st.integers(1, 2**40))
def test_memory_request_covers_the_measured_peak(model: ModelSpec, peak: int) -> None:
    sizing = sizing_for(model, peak)
    assert parse_quantity(sizing.memory_request) >= peak
    assert parse_quantity(sizing.memory_limit) >= parse_quantity(sizing.memory_request)


@settings(PROPERTY, max_examples=50)
@given(model_specs(gpus=some_gpus))
def test_gpu_models_get_gpus_node_selector_and_toleration(model: ModelSpec) -> None:
    pod = parsed(rendered(model)[f"{model.k8s_name}/deployment.yaml"])["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == str(model.resources.gpu)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    expected_selector = {"nvidia.com/gpu.product": model.resources.gpu_type} if model.resources.gpu_type else None
    assert pod.get("nodeSelector") == expected_selector


@pytest.mark.parametrize("change, verdict", [
    ({}, "passed"),
    ({"report": {"passed": False}}, "failed"),
    ({"build": {"bento_tag": "m:2"}}, "tested m:1, built since as m:2"),  # rebuilt (a new version) after the test
    ({"model": {"slo": {"p99_ms": 10}}}, "tested against slo.p99_ms 100, models.yaml now says 10"),
    ({"model": {"resources": {"cpu": "250m"}}}, "tested with resources.cpu 1, models.yaml now says 250m"),
    ({"model": {"resources": {"cpu": "1000m"}}}, "passed"),  # the same request written another way
    ({"capacity": {"cpu_request": None}}, "passed"),  # a report from before the request was kept
    ({"report": {"capacity": None}}, "passed"),  # tested with --load-seconds 0
])
def test_manifests_take_only_a_passed_test_of_what_is_built_and_declared_now(tmp_path: Path, change: dict,
                                                                             verdict: str) -> None:
    from factory.manifests import last_test
    from factory.state import BuildRecord, StateDir, TestReport
    from test_state import BUILD, REPORT

    state = StateDir(tmp_path)
    BuildRecord(**{**BUILD, **change.get("build", {})}).save(state.record_path("m"))
    capacity = {**REPORT["capacity"], "cpu_request": "1", **change.get("capacity", {})}
    TestReport(**{**REPORT, "capacity": capacity, **change.get("report", {})}).save(state.report_path("m"))
    model = ModelSpec.model_validate({"name": "m", "version": 1, "endpoint": "m", **change.get("model", {})})
    assert last_test(state, model) == verdict
    assert last_test(state, model.model_copy(update={"name": "untested"})) == "not tested"
