"""The parent .gitlab-ci.yml and the generated child pipeline, executed by gitlab-ci-local."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from e2e_support.factory_env import ROOT, FactoryEnv
from e2e_support.gitlab import run_pipeline, scratch_repository

pytestmark = [pytest.mark.e2e]

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



def test_a_failing_child_job_fails_the_run_although_gitlab_ci_local_exits_0(tmp_path: Path) -> None:
    repository = scratch_repository(tmp_path / "repo", {".gitlab-ci.yml": PLANTED_PARENT})
    run = run_pipeline(repository, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.exit_code == 0  # the gitlab-ci-local bug this harness exists for
    assert run.failed_jobs == ["planted-failure"]
    assert run.jobs["good-job"] == "PASS"
    assert not run.succeeded


@pytest.mark.xdist_group("bento")
def test_the_example_pipeline_runs_end_to_end(factory_env: FactoryEnv, tmp_path: Path) -> None:
    """validate → render → trigger → build → test → deploy (manifests; no cluster here) for every model."""
    repository = scratch_repository(tmp_path / "repo")
    env = {**factory_env.env, "FACTORY_VENV": str(ROOT / ".venv"), "HOME": str(tmp_path),
           "FACTORY_FUZZ_EXAMPLES": "15", "FACTORY_LOAD_SECONDS": "1",
           # A runner without a Docker engine (images are tested in test_e2e_images): jobs build Bentos only.
           "DOCKER_HOST": f"unix://{tmp_path / 'no-engine.sock'}"}
    env.pop("FACTORY_STATE")  # the pipeline keeps its state in the project directory, as in GitLab
    env.pop("BENTOML_HOME")
    run = run_pipeline(repository, env)
    assert run.succeeded, run.output[-6000:]
    jobs = run.jobs
    assert {"validate", "render", "models", "apply"} <= set(jobs)
    assert len([name for name in jobs if name.startswith(("build-", "test-", "deploy-"))]) == 3 * 8
    reports = sorted((repository / "factory-state" / "reports").glob("*/junit.xml"))
    assert len(reports) == 8
    report = json.loads((repository / "factory-state" / "reports" / "eta_minutes_5_PHV" / "report.json").read_text())
    assert report["passed"]
    assert (repository / "factory-state" / "k8s" / "kustomization.yaml").is_file()
