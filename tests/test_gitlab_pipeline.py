"""The parent .gitlab-ci.yml and the generated child pipeline: GitLab's schema and limits, and runs
under gitlab-ci-local with a fresh workspace per job, as merge-request and default-branch pipelines."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from check_jsonschema.cli.main_command import main as check_jsonschema
from click.testing import CliRunner

from e2e_support.factory_env import ALIAS_MODEL, MIXED_MODEL, ROOT, FactoryEnv
from e2e_support.gitlab import artifact, commit, git, run_pipeline, scratch_repository
from factory.catalog import Catalog
from factory.errors import CatalogError
from factory.loader import parse_catalog
from factory.pipeline import MAX_CHILD_YAML_BYTES, MAX_NEEDS
from factory.render import child_pipeline

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


def _schema_errors(path: Path) -> str:
    result = CliRunner().invoke(check_jsonschema, ["--builtin-schema", "vendor.gitlab-ci", str(path)])
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
    text = child_pipeline(_large_catalog(1000))
    (tmp_path / "child.yml").write_text(text)
    assert _schema_errors(tmp_path / "child.yml") == ""
    jobs = _jobs(text)
    assert len(text.encode()) < MAX_CHILD_YAML_BYTES
    assert max(len(job.get("needs", [])) for job in jobs.values()) <= MAX_NEEDS
    assert len([name for name in jobs if name.startswith(MODEL_STAGES)]) == 3000
    assert [job["tags"] for name, job in jobs.items() if "tags" in job] == [["gpu"]] * 30
    assert yaml.safe_load(text)["default"]["image"] == "python:3.11-bookworm"
    assert jobs["build-model-7"]["services"] == [{"name": "docker:27-dind", "alias": "docker"}]
    assert "services" not in jobs["test-model-7"]
    apply = jobs["apply"]
    assert [len(apply["dependencies"]), apply["resource_group"], apply["environment"]["name"], apply["interruptible"],
            apply["rules"][0]["when"]] == [20, "prod", "prod", False, "manual"]


@pytest.mark.parametrize("pipeline, message", [
    ('{gpu_runner_tags: ["gpu; rm -rf /"]}', "models.yaml:1:30: pipeline.gpu_runner_tags[0]: must be a runner tag such "
                                            "as 'gpu' (letters, digits, '.', '_', '-'); got 'gpu; rm -rf /'"),
    ("{environment: {name: Prod_1}}", "models.yaml:1:32: pipeline.environment.name: must be a DNS-1123 label: "
                                      "lowercase letters, digits and '-', at most 63 characters; got 'Prod_1'"),
    ('{image: "Python:3.11 && x"}', "models.yaml:1:19: pipeline.image: must be an image reference such as "
                                    "'python:3.11-bookworm' (lowercase); got 'Python:3.11 && x'"),
    ("{tags: [gpu]}", "models.yaml:1:12: pipeline.tags: unknown key (hint: allowed keys: image, gpu_runner_tags, "
                      "environment, docker_service)"),
])
def test_pipeline_settings_never_reach_the_yaml_unchecked(pipeline: str, message: str) -> None:
    with pytest.raises(CatalogError) as error:
        parse_catalog(f"pipeline: {pipeline}\nmodels: [{{name: m, version: 1, endpoint: p}}]\n", "models.yaml")
    assert str(error.value) == message


def test_a_child_without_deploy_has_no_apply_and_passes_the_schema(tmp_path: Path) -> None:
    text = child_pipeline(_large_catalog(20), deploy=False)
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


def _merge_request(tmp_path: Path, factory_env: FactoryEnv, edit) -> tuple[Path, list[str]]:
    """A feature branch off main, then main moves on (another model changes there): MR variables for it."""
    repository = scratch_repository(tmp_path / "repo")
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
    run = run_pipeline(repository, env, *variables)
    assert run.succeeded, run.output[-6000:]
    assert sorted(run.jobs) == sorted(["validate", "render", "models", *(f"{s}{MIXED_SLUG}" for s in MODEL_STAGES)])
    # The test job imported the build job's exported Bento instead of building again.
    assert f"{MIXED_MODEL}: unchanged, skipped" in run.output
    report = json.loads(artifact(repository, f"test-{MIXED_SLUG}", f"factory-state/reports/{MIXED_MODEL}/report.json")
                        .read_text())
    assert report["passed"]

    # The build job's artifact expires: re-running the test job regenerates it from git and the registry.
    shutil.rmtree(artifact(repository, f"build-{MIXED_SLUG}", ""))
    shutil.copy(artifact(repository, "render", "build/child-pipeline.yml"), repository / "child.yml")
    rerun = run_pipeline(repository, env, "--file", "child.yml", f"test-{MIXED_SLUG}")
    assert rerun.succeeded, rerun.output[-6000:]
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
    repository = scratch_repository(tmp_path / "repo")
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
