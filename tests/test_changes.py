"""Merge-request pipelines hold jobs only for what changed against the target branch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from factory.cli import main


def _catalog(count: int, changed: int | None = None, extra_route: bool = False) -> str:
    models = [{"name": f"m_{i}", "version": 1, "endpoint": "p", "parameters": [str(i)],
               **({"batching": {"max_batch_size": 8}} if i == changed else {})} for i in range(count)]
    if extra_route:
        models.append({"name": "m_new", "version": 1, "endpoint": "q"})
    return yaml.safe_dump({"models": models}, sort_keys=False)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    (tmp_path / "models.yaml").write_text(_catalog(100))
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "models.yaml")
    _git(tmp_path, "commit", "-qm", "100 models")
    return tmp_path


def _jobs(repo: Path, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["render", "-f", str(repo / "models.yaml"), "-o", str(repo / "build"), *extra])
    assert result.exit_code == 0, result.output
    pipeline = yaml.safe_load((repo / "build" / "child-pipeline.yml").read_text())
    return {name: job for name, job in pipeline.items() if isinstance(job, dict) and "stage" in job}


def test_one_changed_model_of_100_gets_the_only_model_jobs(repo: Path) -> None:
    (repo / "models.yaml").write_text(_catalog(100, changed=42))
    assert sorted(_jobs(repo, "--changed-since", "HEAD")) == ["apply", "build-m-42", "deploy-m-42", "test-m-42"]
    assert "factory manifests --proxy" not in yaml.safe_dump(_jobs(repo, "--changed-since", "HEAD")["apply"])


def test_a_new_route_brings_the_proxy_along(repo: Path) -> None:
    (repo / "models.yaml").write_text(_catalog(100, extra_route=True))
    jobs = _jobs(repo, "--changed-since", "HEAD")
    assert sorted(jobs) == ["apply", "build-m-new", "deploy-m-new", "test-m-new"]
    assert "factory manifests --proxy" in jobs["apply"]["script"]


def test_nothing_changed_gives_a_valid_pipeline_that_says_so(repo: Path) -> None:
    assert list(_jobs(repo, "--changed-since", "HEAD")) == ["nothing-changed"]


def test_without_the_flag_every_model_gets_jobs(repo: Path) -> None:
    assert len(_jobs(repo)) == 3 * 100 + 1


def test_an_unsafe_ref_is_refused(repo: Path) -> None:
    result = CliRunner().invoke(main, ["render", "-f", str(repo / "models.yaml"), "-o", str(repo / "b"),
                                       "--changed-since", "main; rm -rf /"])
    assert result.exit_code == 1
    assert result.output.startswith("--changed-since 'main; rm -rf /': not a plain git ref")
    assert not (repo / "b").exists()
