"""The parent .gitlab-ci.yml and the generated child pipeline: GitLab's schema and limits, and runs
under gitlab-ci-local with a fresh workspace per job, as merge-request and default-branch pipelines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from check_jsonschema.cli.main_command import main as check_jsonschema
from click.testing import CliRunner

from e2e_support.factory_env import ALIAS_MODEL, MIXED_MODEL, ROOT, FactoryEnv
from e2e_support.gitlab import artifact, artifacts_api, commit, git, project_files, run_pipeline, scratch_repository
from e2e_support.oci import registry_serves
from factory import engine
from factory.baseimage import ensure_base_image, recipe_tags
from factory.catalog import Catalog
from factory.errors import CatalogError
from factory.loader import parse_catalog
from factory.pipeline import MAX_CHILD_YAML_BYTES, MAX_NEEDS, SHARD_DIR
from factory.render import child_pipeline, pack_shards

PLANTED_PARENT = textwrap.dedent("""\
    stages: [render, child]
    render:
      stage: render
      script:
        - |
          mkdir -p build
          echo 'good-job: {script: ["true"]}' > build/child.yml
          echo 'planted-failure: {script: ["exit 3"]}' >> build/child.yml
      artifacts:
        paths: [build/]
    child:
      stage: child
      trigger:
        include:
          - artifact: build/child.yml
            job: render
        strategy: depend
    """)
MODEL_STAGES = ("build-", "test-", "deploy-")
MIXED_SLUG = MIXED_MODEL.lower().replace("_", "-")


def _schema_errors(*paths: Path) -> str:
    result = CliRunner().invoke(check_jsonschema, ["--builtin-schema", "vendor.gitlab-ci", *map(str, paths)])
    return "" if result.exit_code == 0 else result.output


def _large_catalog(count: int) -> Catalog:
    models = [{"name": f"model_{i}", "endpoint": "m", "parameters": [str(i)],
               **({"alias": "champion"} if i % 10 == 0 else {"version": 1 + i % 3}),
               **({"resources": {"gpu": 1}} if i % 100 == 1 else {})} for i in range(count)]
    return parse_catalog(yaml.safe_dump({"pipeline": {"environment": {"name": "prod", "protected": True},
                                                      "docker_service": "docker:27-dind"},
                                         "models": models}), "models.yaml")


def _jobs(text: str) -> dict[str, dict]:
    return {name: job for name, job in yaml.safe_load(text).items() if isinstance(job, dict) and "stage" in job}


def test_parent_and_a_1000_model_child_pass_gitlabs_schema_and_limits(tmp_path: Path) -> None:
    assert _schema_errors(ROOT / ".gitlab-ci.yml") == ""
    catalog = _large_catalog(1000)
    pinned = {model.name: 4 for model in catalog.models if model.alias is not None}
    files = child_pipeline(catalog, pinned=pinned)
    shard_names = [f"{SHARD_DIR}/shard-{n:03d}.yml" for n in range(1, 8)]  # 150 models each: 7 shards
    assert sorted(files) == ["child-pipeline.yml", *shard_names]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
        assert len(text.encode()) < MAX_CHILD_YAML_BYTES
        jobs = _jobs(text)
        assert len(jobs) <= 500, name  # GitLab.com Free: 500 jobs in one pipeline
        assert max(len(job.get("needs", [])) for job in jobs.values()) <= MAX_NEEDS
    assert _schema_errors(*(tmp_path / name for name in files)) == ""
    shards = {name: _jobs(files[name]) for name in shard_names}
    model_jobs = [name for jobs in shards.values() for name in jobs if name.startswith(MODEL_STAGES)]
    assert len(model_jobs) == len(set(model_jobs)) == 3000
    assert [len([n for n in jobs if n.startswith(MODEL_STAGES)]) for jobs in shards.values()] == [450] * 6 + [300]
    tags = [job["tags"] for jobs in shards.values() for job in jobs.values() if "tags" in job]
    assert tags == [["gpu"]] * 30
    first = shards[shard_names[0]]
    engine = yaml.safe_load(files[shard_names[0]])[".image-engine"]
    assert engine["services"] == [{"name": "docker:27-dind", "alias": "docker"}]
    assert [engine["variables"][name] for name in ("DOCKER_HOST", "FACTORY_BASE_ROOTFS", "FACTORY_BASE_CACHE")] == [
        "tcp://docker:2376", "debian:bookworm-20251229-slim", "$CI_REGISTRY_IMAGE/model-factory/python-base"]
    assert first["build-model-7"]["extends"] == [".factory-job", ".image-engine"]
    assert first["test-model-7"]["extends"] == ".factory-job"  # no engine: the test job measures host processes
    assert yaml.safe_load(files[shard_names[0]])["variables"]["FACTORY_PINNED_VERSIONS"] == " ".join(
        f"{name}=4" for name in sorted(pinned))
    # A shard applies its own models; only the dispatcher applies the proxy and records the deploy.
    assert "record-deploy" not in " ".join(first["apply"]["script"])
    assert [first["apply"]["resource_group"], first["apply"]["rules"][0]["when"]] == ["prod", "manual"]

    dispatcher = _jobs(files["child-pipeline.yml"])
    assert sorted(dispatcher) == sorted(["shard-files", "apply", *(f"models-{n}" for n in range(1, 8))])
    assert [dispatcher[f"models-{n}"]["trigger"] for n in range(1, 8)] == [
        {"include": [{"artifact": name, "job": "shard-files"}], "strategy": "depend"} for name in shard_names]
    apply = dispatcher["apply"]
    assert [apply["resource_group"], apply["environment"]["name"], apply["interruptible"],
            apply["rules"][0]["when"]] == ["prod", "prod", False, "manual"]
    assert apply["variables"]["FACTORY_KEPT_VERSIONS"] == " ".join(f"{name}=4" for name in sorted(pinned))
    # The shard files travel inside the dispatcher: its first job unpacks exactly what render wrote.
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    (tmp_path / "script.sh").write_text("\n".join(dispatcher["shard-files"]["script"]))  # as a runner writes it
    subprocess.run(["sh", "-e", str(tmp_path / "script.sh")], cwd=unpacked, check=True, capture_output=True)
    assert {path.relative_to(unpacked).as_posix(): path.read_text() for path in unpacked.rglob("*.yml")} == {
        name: files[name] for name in shard_names}


def test_up_to_models_per_child_models_stay_in_one_child(tmp_path: Path) -> None:
    files = child_pipeline(_large_catalog(150))
    assert list(files) == ["child-pipeline.yml"]
    jobs = _jobs(files["child-pipeline.yml"])
    assert len([name for name in jobs if name.startswith(MODEL_STAGES)]) == 450
    assert jobs["apply"]["script"][0] == "factory fetch-artifacts collect-1 collect-2 collect-3"
    assert "record-deploy" in " ".join(jobs["apply"]["script"])


@pytest.mark.parametrize("pipeline, message", [
    ('{gpu_runner_tags: ["gpu; rm -rf /"]}', "models.yaml:1:30: pipeline.gpu_runner_tags[0]: must be a runner tag such "
                                            "as 'gpu' (letters, digits, '.', '_', '-'); got 'gpu; rm -rf /'"),
    ("{environment: {name: Prod_1}}", "models.yaml:1:32: pipeline.environment.name: must be a DNS-1123 label: "
                                      "lowercase letters, digits and '-', at most 63 characters; got 'Prod_1'"),
    ('{image: "Python:3.11 && x"}', "models.yaml:1:19: pipeline.image: must be an image reference such as "
                                    "'python:3.11-bookworm' (lowercase); got 'Python:3.11 && x'"),
    ("{tags: [gpu]}", "models.yaml:1:12: pipeline.tags: unknown key (hint: allowed keys: image, gpu_runner_tags, "
                      "environment, docker_service, base_rootfs, models_per_child)"),
])
def test_pipeline_settings_never_reach_the_yaml_unchecked(pipeline: str, message: str) -> None:
    with pytest.raises(CatalogError) as error:
        parse_catalog(f"pipeline: {pipeline}\nmodels: [{{name: m, version: 1, endpoint: p}}]\n", "models.yaml")
    assert str(error.value) == message


def test_a_child_without_deploy_has_no_apply_and_passes_the_schema(tmp_path: Path) -> None:
    text = child_pipeline(_large_catalog(20), deploy=False)["child-pipeline.yml"]
    (tmp_path / "child.yml").write_text(text)
    assert _schema_errors(tmp_path / "child.yml") == ""
    assert not [name for name in _jobs(text) if name.startswith(("apply", "collect-"))]
    assert len(_jobs(text)) == 3 * 20


@pytest.mark.e2e
def test_a_failing_child_job_fails_the_run_although_gitlab_ci_local_exits_0(tmp_path: Path) -> None:
    repository = scratch_repository(tmp_path / "repo", {".gitlab-ci.yml": PLANTED_PARENT})
    run = run_pipeline(repository, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.exit_code == 0  # the gitlab-ci-local bug this harness exists for
    assert run.failed_jobs == ["planted-failure"]
    assert run.jobs["good-job"] == "PASS"
    assert not run.succeeded


DISPATCHING_PARENT = textwrap.dedent("""\
    stages: [render, child]
    render:
      stage: render
      script: ["mkdir -p build", "cp dispatcher.yml build/child-pipeline.yml"]
      artifacts:
        paths: [build/]
    models:
      stage: child
      trigger:
        include:
          - artifact: build/child-pipeline.yml
            job: render
        strategy: depend
    """)


@pytest.mark.e2e
def test_a_sharded_child_dispatches_every_shard_and_a_planted_failure_fails_the_run(tmp_path: Path) -> None:
    """The generated dispatcher, run two levels deep (GitLab's maximum) under gitlab-ci-local: it unpacks the
    shard files it carries and triggers each. Shards hold toy jobs here (model jobs run in the MR test)."""
    catalog = parse_catalog((ROOT / "models.yaml").read_text() + "pipeline: {models_per_child: 4}\n", "models.yaml")
    files = child_pipeline(catalog, deploy=False)
    shards = sorted(name for name in files if name != "child-pipeline.yml")
    assert len(shards) == 2
    toys = {shards[0]: "stages: [build]\nshard-one-job: {stage: build, script: ['echo from shard one']}\n",
            shards[1]: "stages: [build]\nplanted-failure: {stage: build, script: ['exit 3']}\n"}
    real = pack_shards({name: files[name] for name in shards})
    dispatcher = files["child-pipeline.yml"].replace(real, pack_shards(toys))
    repository = scratch_repository(tmp_path / "repo", {".gitlab-ci.yml": DISPATCHING_PARENT,
                                                        "dispatcher.yml": dispatcher})
    run = run_pipeline(repository, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.jobs == {"render": "PASS", "models": "PASS", "shard-files": "PASS", "models-1": "PASS",
                        "models-2": "PASS", "shard-one-job": "PASS", "planted-failure": "FAIL"}, run.output[-3000:]
    assert "from shard one" in run.output
    assert not run.succeeded


def _env(factory_env: FactoryEnv, tmp_path: Path) -> dict[str, str]:
    env = {**factory_env.env, "FACTORY_VENV": str(ROOT / ".venv"), "HOME": str(tmp_path),
           "FACTORY_FUZZ_EXAMPLES": "8", "FACTORY_LOAD_SECONDS": "1",
           # A runner without a Docker engine (images are tested in test_e2e_images): jobs build Bentos only.
           "DOCKER_HOST": f"unix://{tmp_path / 'no-engine.sock'}"}
    for name in ("FACTORY_STATE", "BENTOML_HOME", "KUBECONFIG"):
        env.pop(name, None)  # the pipeline keeps its state in each job's project directory, as in GitLab
    return env


def _alias_version(factory_env: FactoryEnv) -> int:
    from factory.registry import Registry

    catalog = parse_catalog((ROOT / "models.yaml").read_text(), "models.yaml")
    model = next(m for m in catalog.models if m.name == ALIAS_MODEL)
    with factory_env.activated():
        return Registry(catalog, factory_env.env["MLFLOW_TRACKING_URI"]).resolve(model).version


def _edit_catalog(repository: Path, old: str, new: str) -> None:
    path = repository / "models.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _without_dind(tmp_path: Path) -> Path:
    """The project in a scratch repository, rendering its child pipeline for runners without Docker-in-Docker:
    gitlab-ci-local starts a job's `services:` with docker even under its shell executor, and docker:dind
    cannot be pulled here (the build-job test below runs the dind form, the project's engine standing in)."""
    repository = scratch_repository(tmp_path / "repo")
    catalog = repository / "models.yaml"
    catalog.write_text(catalog.read_text() + "\npipeline: {docker_service: null}\n")
    commit(repository, "runners without Docker-in-Docker")
    return repository


def _merge_request(tmp_path: Path, factory_env: FactoryEnv, edit) -> tuple[Path, list[str]]:
    """A feature branch off main, then main moves on (another model changes there): MR variables for it."""
    repository = _without_dind(tmp_path)
    base = git(repository, "rev-parse", "HEAD")
    git(repository, "checkout", "-qb", "feature")
    edit(repository)
    commit(repository, "feature")
    git(repository, "checkout", "-q", "main")
    _edit_catalog(repository, "resources: {cpu: 2, gpu: 1", "resources: {cpu: 3, gpu: 1")  # the target moved
    commit(repository, "main moved")
    git(repository, "checkout", "-q", "feature")
    record = tmp_path / "deployed.json"
    record.write_text(json.dumps({"commit": base, "versions": {ALIAS_MODEL: _alias_version(factory_env)}}))
    return repository, ["--variable", "CI_PIPELINE_SOURCE=merge_request_event",
                        "--variable", f"CI_MERGE_REQUEST_DIFF_BASE_SHA={base}",
                        "--variable", "CI_MERGE_REQUEST_TARGET_BRANCH_NAME=main",
                        "--variable", f"FACTORY_LAST_DEPLOY={record}"]


@pytest.mark.e2e
@pytest.mark.xdist_group("registry")  # needs only factory_env: runs beside the "bento" group
def test_a_merge_request_runs_only_its_model_and_regenerates_an_expired_artifact(factory_env: FactoryEnv,
                                                                                 tmp_path: Path) -> None:
    repository, variables = _merge_request(tmp_path, factory_env, lambda repo: _edit_catalog(
        repo, "    parameters: [2, TAXI, trafficaware]\n",
        "    parameters: [2, TAXI, trafficaware]\n    batching: {max_batch_size: 16}\n"))
    env = _env(factory_env, tmp_path)
    with artifacts_api(repository, env) as api:
        run = run_pipeline(repository, env, *variables)
        assert run.succeeded, run.output[-6000:]
        assert sorted(run.jobs) == sorted(["validate", "render", "models",
                                           *(f"{s}{MIXED_SLUG}" for s in MODEL_STAGES)])
        # Each job fetched its input through the job artifacts API (its `needs` download nothing, so GitLab
        # never refuses to start it), and the test job imported the exported Bento instead of building again.
        child = yaml.safe_load(artifact(repository, "render", "build/child-pipeline.yml").read_text())
        assert child[f"test-{MIXED_SLUG}"]["needs"] == [{"job": f"build-{MIXED_SLUG}", "artifacts": False}]
        assert sorted(api.downloads) == [f"build-{MIXED_SLUG}", f"test-{MIXED_SLUG}"]
        assert f"build-{MIXED_SLUG}: artifacts fetched" in run.output
        assert f"{MIXED_MODEL}: unchanged, skipped" in run.output
        report = json.loads(artifact(repository, f"test-{MIXED_SLUG}",
                                     f"factory-state/reports/{MIXED_MODEL}/report.json").read_text())
        assert report["passed"]

        # The build job's artifact expires (GitLab answers 404): re-running the test job regenerates it.
        api.erase(f"build-{MIXED_SLUG}")
        shutil.copy(artifact(repository, "render", "build/child-pipeline.yml"), repository / "child.yml")
        rerun = run_pipeline(repository, env, "--file", "child.yml", f"test-{MIXED_SLUG}")
    assert rerun.succeeded, rerun.output[-6000:]
    assert f"build-{MIXED_SLUG}: artifacts expired or erased (HTTP 404)" in rerun.output
    assert f"{MIXED_MODEL}: built" in rerun.output


@pytest.mark.e2e
def test_a_readme_only_merge_request_gives_the_nothing_changed_child(factory_env: FactoryEnv, tmp_path: Path) -> None:
    repository, variables = _merge_request(
        tmp_path, factory_env, lambda repo: (repo / "README.md").write_text("edited\n"))
    run = run_pipeline(repository, _env(factory_env, tmp_path), *variables)
    assert run.succeeded, run.output[-6000:]
    assert sorted(run.jobs) == ["models", "nothing-changed", "render", "validate"]


@pytest.mark.e2e
def test_a_kubernetes_template_edit_gives_every_model_jobs_and_no_apply(factory_env: FactoryEnv,
                                                                         tmp_path: Path) -> None:
    def edit(repo: Path) -> None:
        template = repo / "templates" / "k8s" / "service.yaml.j2"
        template.write_text(template.read_text() + "# edited\n")

    repository, variables = _merge_request(tmp_path, factory_env, edit)
    run = run_pipeline(repository, _env(factory_env, tmp_path), *variables, "--needs", "render")
    assert run.succeeded, run.output[-6000:]
    child = yaml.safe_load(artifact(repository, "render", "build/child-pipeline.yml").read_text())
    models = parse_catalog((repository / "models.yaml").read_text(), "models.yaml").models
    assert sorted(name for name in child if name.startswith(MODEL_STAGES)) == sorted(
        f"{stage}{model.k8s_name}" for model in models for stage in MODEL_STAGES)
    assert not [name for name in child if name.startswith(("apply", "collect-"))]


@pytest.mark.e2e
def test_the_default_branch_applies_what_changed_since_the_last_deploy_and_records_it(
        factory_env: FactoryEnv, tmp_path: Path) -> None:
    repository = _without_dind(tmp_path)
    deployed = git(repository, "rev-parse", "HEAD")
    _edit_catalog(repository, "weight: 90}", "weight: 80}")
    _edit_catalog(repository, "weight: 10}", "weight: 20}")
    head = commit(repository, "shift the rollout")
    version = _alias_version(factory_env)
    record = tmp_path / "deployed.json"
    record.write_text(json.dumps({"commit": deployed, "versions": {ALIAS_MODEL: version}}))
    run = run_pipeline(repository, _env(factory_env, tmp_path), "--variable", f"FACTORY_LAST_DEPLOY={record}")
    assert run.succeeded, run.output[-6000:]
    assert sorted(run.jobs) == ["apply", "models", "render", "validate"]  # routes only: the proxy, no model
    assert json.loads(artifact(repository, "apply", "factory-state/deployed.json").read_text()) == {
        "commit": head, "versions": {ALIAS_MODEL: version}}
    assert sorted(artifact(repository, "apply", "factory-state/k8s/proxy").glob("*.yaml"))


def test_collect_and_apply_regenerate_only_the_models_whose_artifacts_did_not_arrive(tmp_path: Path) -> None:
    """The scripts as GitLab runs them, with a `factory` that logs its calls: the first model's deploy artifact
    arrived (its record and manifests are there), the others' are gone and get build -> test -> manifests."""
    catalog = parse_catalog((ROOT / "models.yaml").read_text(), "models.yaml")
    pipeline = yaml.safe_load(child_pipeline(catalog)["child-pipeline.yml"])
    first, *rest = catalog.models
    (tmp_path / "factory-state" / "builds" / first.name).mkdir(parents=True)
    (tmp_path / "factory-state" / "builds" / first.name / "record.json").write_text("{}")
    (tmp_path / "factory-state" / "k8s" / first.k8s_name).mkdir(parents=True)
    log = tmp_path / "factory.log"
    shim = tmp_path / "bin" / "factory"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    shim.chmod(0o755)
    fetched = {"collect-1": " ".join(f"deploy-{model.k8s_name}" for model in catalog.models), "apply": "collect-1"}
    for job in ("collect-1", "apply"):
        log.unlink(missing_ok=True)
        script = "\n".join(line for line in pipeline[job]["script"] if not line.startswith("factory ")
                           or line.startswith("factory fetch-artifacts"))
        subprocess.run(["sh", "-ec", script], cwd=tmp_path, check=True, env={"PATH": f"{shim.parent}:/usr/bin:/bin"})
        calls = log.read_text().splitlines()
        assert calls[0] == f"fetch-artifacts {fetched[job]}"
        assert calls[1:] == [f"{step} {model.name}" for model in rest for step in ("build", "test", "manifests")]


def _path_without_docker(folder: Path, path: str) -> str:
    """A PATH with every command of `path` except the docker CLI: what a job in pipeline.image has."""
    folder.mkdir()
    for directory in filter(os.path.isdir, path.split(os.pathsep)):
        for entry in os.scandir(directory):
            link = folder / entry.name
            if not entry.name.startswith("docker") and not os.path.lexists(link):
                link.symlink_to(entry.path)
    return str(folder)


@pytest.mark.e2e
@pytest.mark.xdist_group("registry")  # needs only factory_env and the engine: runs beside the "bento" group
def test_the_build_job_builds_and_pushes_its_image_to_ci_registry_image_without_a_docker_cli(
        docker_engine: str, factory_env: FactoryEnv, tmp_path: Path) -> None:
    """The rendered build job under gitlab-ci-local's shell executor, which ignores `services:`. Emulated:
    the Docker-in-Docker service (GitLab: tcp://docker:2376 over TLS) is the project's engine on its socket,
    and the public Debian root (nothing can be pulled here) is the debootstrapped one, already in the engine."""
    ensure_base_image(progress=lambda line: None)  # a no-op under `make test`, which built it
    repository = scratch_repository(tmp_path / "repo")
    catalog = parse_catalog((repository / "models.yaml").read_text(), "models.yaml")
    child = yaml.safe_load(child_pipeline(catalog)["child-pipeline.yml"])
    assert child[".image-engine"]["services"] == [{"name": "docker:27.5.1-dind", "alias": "docker"}]
    assert child[f"build-{MIXED_SLUG}"]["extends"] == [".factory-job", ".image-engine"]
    del child[".image-engine"]["services"]  # gitlab-ci-local would start it with docker: the engine stands in
    (repository / "child.yml").write_text(yaml.safe_dump(child, sort_keys=False))
    env = _env(factory_env, tmp_path)
    env["PATH"] = _path_without_docker(tmp_path / "bin", env["PATH"])
    registry_image = f"{docker_engine}/gitlab-ci/project"
    variables = {"DOCKER_HOST": engine.docker_host() or "unix:///var/run/docker.sock", "DOCKER_TLS_VERIFY": "",
                 "DOCKER_CERT_PATH": "", "FACTORY_BASE_ROOTFS": recipe_tags()[0], "CI_REGISTRY": docker_engine,
                 "CI_REGISTRY_IMAGE": registry_image, "CI_REGISTRY_USER": "gitlab-ci-token",
                 "CI_REGISTRY_PASSWORD": "job-token"}
    run = run_pipeline(repository, env, "--file", "child.yml", f"build-{MIXED_SLUG}",
                       *(arg for name, value in variables.items() for arg in ("--variable", f"{name}={value}")))
    assert run.succeeded, run.output[-6000:]
    assert run.jobs == {f"build-{MIXED_SLUG}": "PASS"}
    assert "images skipped" not in run.output and "docker: not found" not in run.output
    record = json.loads(artifact(repository, f"build-{MIXED_SLUG}",
                                 f"factory-state/builds/{MIXED_MODEL}/record.json").read_text())
    assert record["image"].startswith(f"{registry_image}/{MIXED_SLUG}:")
    assert record["image_ref"].startswith(f"{registry_image}/{MIXED_SLUG}@sha256:")
    assert registry_serves(record["image_ref"])


def test_a_source_archive_without_git_gives_the_pipelines_the_files_a_checkout_tracks(tmp_path: Path) -> None:
    """A stranger who downloaded the source archive (`git archive`, no .git) ran the pipeline tests: all five that
    copy the project into a scratch repository failed on `git ls-files` (session 10). Without .git, the files are
    what .gitignore lets through: those a checkout of the same tree tracks, never its venv or build output."""
    tree = {".gitignore": ".venv/\n/build/\n*.pyc\n", "Makefile": "", "factory/cli.py": "", "models yaml é.txt": "",
            ".venv/bin/python": "", "build/child-pipeline.yml": "", "factory/cli.pyc": ""}
    archive, checkout = tmp_path / "archive", tmp_path / "checkout"
    for root in (archive, checkout):
        for name, text in tree.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    git(checkout, "init", "-q")
    git(checkout, "add", "-A")
    assert project_files(archive) == project_files(checkout) == [
        ".gitignore", "Makefile", "factory/cli.py", "models yaml é.txt"]
