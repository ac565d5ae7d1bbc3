"""Real images in a real registry: built and pushed by `factory build`, measured in their containers under
the memory limit their manifests carry, and referenced by digest in those manifests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from kubernetes.utils import parse_quantity

from e2e_support.factory_env import ALIAS_MODEL, MIXED_MODEL, FactoryEnv
from e2e_support.oci import registry_serves
from e2e_support.private_index import GREETING, MODULE, PACKAGE, TOKEN, USER, VERSION, private_index
from factory import dockerapi
from factory.errors import ServeError
from factory.golden import sample_requests
from factory.images import ImageStep
from factory.loader import parse_catalog
from factory.loadgen import OPEN_LOOP_CONNECTIONS, run_load
from factory.memory import MemoryProfile
from factory.serve import OOMKilled, container_served
from factory.state import BuildRecord, StateDir

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("bento")]
MODELS = [MIXED_MODEL, ALIAS_MODEL]


@pytest.fixture(scope="module")
def imaged(docker_engine: str, tested: FactoryEnv) -> FactoryEnv:
    tested.run("manifests", *MODELS, "--proxy")
    return tested


def _record(env: FactoryEnv, model: str) -> dict:
    return json.loads((env.state / "builds" / model / "record.json").read_text())


def _deployment(env: FactoryEnv, folder: str) -> dict:
    path = next((env.state / "k8s" / folder).glob("*deployment*.yaml"))
    return yaml.safe_load(path.read_text())


def _container_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("model", MODELS)
def test_manifests_reference_pushed_digests_theregistry_serves(imaged: FactoryEnv, model: str) -> None:
    record = _record(imaged, model)
    image = _container_spec(_deployment(imaged, record["image"].split("/")[-1].split(":")[0]))["image"]
    assert image == record["image_ref"] and "@sha256:" in image and "unbuilt" not in image
    assert record["image_size_bytes"] > 0
    assert registry_serves(image)


def test_proxy_manifest_references_the_pushed_proxy_image(imaged: FactoryEnv) -> None:
    pushed = json.loads((imaged.state / "builds" / "proxy" / "image.json").read_text())
    deployment = _deployment(imaged, "proxy")
    assert _container_spec(deployment)["image"] == pushed["reference"]
    assert registry_serves(pushed["reference"])


@pytest.mark.parametrize("model", MODELS)
def test_reports_say_memory_was_measured_in_the_container(imaged: FactoryEnv, model: str) -> None:
    report = json.loads((imaged.state / "reports" / model / "report.json").read_text())
    memory = report["memory"]
    assert memory["sampler"].startswith("container cgroup")
    assert report["capacity"]["cpu_limit"] == 0.5  # measured on the CPU its pod requests (models.yaml: 500m)
    assert parse_quantity(memory["memory_limit"]) > 0
    assert set(memory["phases"]) == {"idle", "fuzz", "load"}


def _heavier_load_bodies(signature: dict, batch: int) -> list[bytes]:
    """Full batches only, from inputs the sizing run never drew (another seed)."""
    requests = sample_requests(signature, count=32, batch_size=batch, seed=7)
    return [json.dumps(request).encode() for request in requests]


@pytest.mark.parametrize("model", MODELS)
def test_held_back_heavier_load_stays_within_the_sized_request(imaged: FactoryEnv, model: str,
                                                               tmp_path: Path) -> None:
    """A load the sizing never saw (other inputs, full batches, as many clients as the capacity search opens past
    capacity, where the sizing's peak comes from), under the manifest's limit; and the request not oversized."""
    record = _record(imaged, model)
    resources = _container_spec(_deployment(imaged, record["image"].split("/")[-1].split(":")[0]))["resources"]
    signature = json.loads((imaged.state / "builds" / model / "src" / "resolved.json").read_text())["signature"]
    with imaged.activated(), container_served(record["image_ref"], tmp_path / "held-back.log",
                                               resources["limits"]["memory"]) as served, \
            MemoryProfile.of_container(served.container) as memory:
        with memory.phase("load"):
            load = run_load(served.url, _heavier_load_bodies(signature, 32), concurrency=OPEN_LOOP_CONNECTIONS,
                            duration_s=10)
    assert load.requests > 0
    peak = memory.peak_bytes
    request = parse_quantity(resources["requests"]["memory"])
    assert peak <= request <= 1.3 * peak, (peak / 2**20, request / 2**20)


def test_an_oom_kill_fails_the_test_naming_the_limit(imaged: FactoryEnv, tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text(f"- {{name: {ALIAS_MODEL}, alias: champion, endpoint: eta, parameters: [5, PHV], "
                       "resources: {memory: 40Mi, memory_limit_factor: 1.0}}\n")
    # The failing run replaces the model's report (report.json, junit.xml, fuzz.json, one set) in the session's
    # shared state: put the real set back afterwards, or later tests (and `factory manifests`) would see this model
    # as failed.
    reports = imaged.state / "reports" / ALIAS_MODEL
    kept = {name: (reports / name).read_bytes() if (reports / name).exists() else None
            for name in ("report.json", "junit.xml", "fuzz.json")}
    try:
        result = imaged.run("test", "-f", str(catalog), ALIAS_MODEL, "--examples", "5", check=False)
    finally:
        for name, data in kept.items():
            if data is None:
                (reports / name).unlink(missing_ok=True)
            else:
                (reports / name).write_bytes(data)
    assert result.returncode == 1
    assert f"{ALIAS_MODEL} was OOM-killed at the memory limit 40Mi its manifest carries" in result.stderr
    assert "Traceback" not in result.stderr


def test_container_killed_at_its_limit_raises_oom(imaged: FactoryEnv, tmp_path: Path) -> None:
    with imaged.activated(), pytest.raises(OOMKilled, match="OOM-killed at its memory limit 30Mi"):
        with container_served(_record(imaged, ALIAS_MODEL)["image_ref"], tmp_path / "oom.log", "30Mi"):
            pass


def test_an_image_its_registry_lost_is_one_error_naming_it(imaged: FactoryEnv, tmp_path: Path) -> None:
    repository, digest = _record(imaged, ALIAS_MODEL)["image_ref"].split("@")
    lost = f"{repository}-lost@{digest}"  # the same registry, a repository it never had
    with imaged.activated(), pytest.raises(ServeError) as error:
        with container_served(lost, tmp_path / "lost.log", "256Mi"):
            pass
    assert str(error.value) == (f"the image {lost} did not start: manifest for {lost} not found: manifest unknown: "
                                "manifest unknown; build and push it again (`factory build`), or check that its "
                                "registry still holds it and lets this engine pull")
    with imaged.activated():
        assert dockerapi.gone(lost) and not dockerapi.gone(f"{repository}@{digest}")
        assert not dockerapi.gone(f"127.0.0.1:9/unreachable@{digest}")  # cannot ask: not taken for lost


def test_a_build_pushes_again_an_image_its_registry_lost(imaged: FactoryEnv) -> None:
    record_path = imaged.state / "builds" / ALIAS_MODEL / "record.json"
    kept = record_path.read_bytes()
    record = json.loads(kept)
    repository, digest = record["image_ref"].split("@")
    # As if the registry had been wiped: the record names an image it no longer has.
    record_path.write_text(json.dumps({**record, "image_ref": f"{repository}-lost@{digest}"}))
    try:
        result = imaged.run("build", ALIAS_MODEL)
        rebuilt = _record(imaged, ALIAS_MODEL)["image_ref"]
    finally:
        record_path.write_bytes(kept)
    assert f"{ALIAS_MODEL}: its image {repository}-lost@{digest} is gone from its registry; building it again" \
        in result.stdout
    assert rebuilt.startswith(f"{repository}@sha256:") and registry_serves(rebuilt)


def test_a_private_index_credential_never_reaches_the_image(docker_engine: str, tmp_path: Path, monkeypatch) -> None:
    """FACTORY_PIP_INDEX_URL with a credential, an index requiring it (basic auth), a real build and push: the
    package comes from that index, and neither the history, the saved image, the log nor the engine's leftover
    images hold the credential. A Bento of that one package keeps it cheap (its base image is the session's)."""
    import docker

    export = tmp_path / "private.bento"
    with tarfile.open(export, "w:gz") as archive:
        data = f"{PACKAGE}=={VERSION}\n".encode()
        info = tarfile.TarInfo("env/python/requirements.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    catalog = parse_catalog("models:\n  - {name: private_index, version: 1, endpoint: p}\n")
    state = StateDir(tmp_path / "state")
    with private_index(tmp_path / "index") as url:
        monkeypatch.setenv("FACTORY_PIP_INDEX_URL", url)
        monkeypatch.setenv("FACTORY_IMAGE_REGISTRY", f"{docker_engine}/model-factory-test")
        step = ImageStep(catalog, state, enabled=True)
        record = BuildRecord(model="private_index", content_hash="0" * 64, registry={}, bento_model_tag="p:r1",
                             bento_tag="private_index:0123456789abcdef", bento_export=str(export), image="",
                             dockerfile="", golden="")
        image = step.build(catalog.models[0], record)["image"]
    client = docker.from_env()
    secrets = [TOKEN.encode(), USER.encode()]
    assert not [secret for secret in secrets if secret in json.dumps(client.api.history(image)).encode()]
    found, tail = set(), b""
    for chunk in client.api.get_image(image):  # `docker save`: every layer's files and the image config
        window = tail + chunk
        found |= {needle for needle in [*secrets, GREETING.encode()] if needle in window}
        tail = window[-64:]
    assert found == {GREETING.encode()}  # the package is in a layer, the credential in none
    assert TOKEN not in state.image_log("private_index").read_text()
    assert client.images.list(all=True, filters={"label": "model-factory.index-credentials"}) == []
    answer = client.containers.run(image, ["python", "-c", f"import {MODULE}; print({MODULE}.WHERE)"], remove=True,
                                   network_mode="none")
    assert answer.decode() == f"{GREETING}\n"
