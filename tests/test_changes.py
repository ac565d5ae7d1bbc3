"""Merge-request pipelines hold jobs only for what changed against the target branch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from factory.changes import changed_since
from factory.cli import main
from factory.deploy_record import DeployRecord
from factory.errors import DeployError
from factory.loader import load_catalog
from factory.render import render_catalog

ROOT = Path(__file__).resolve().parents[1]


def _catalog(count: int, changed: int | tuple[int, ...] = (), extra_route: bool = False) -> str:
    changed = (changed,) if isinstance(changed, int) else changed
    models = [{"name": f"m_{i}", "version": 1, "endpoint": "p", "parameters": [str(i)],
               **({"batching": {"max_batch_size": 8}} if i in changed else {})} for i in range(count)]
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
    assert sorted(_jobs(repo, "--changed-since", "HEAD")) == ["apply", "build-m-42", "collect-1", "deploy-m-42",
                                                             "test-m-42"]
    assert "factory manifests --proxy" not in yaml.safe_dump(_jobs(repo, "--changed-since", "HEAD")["apply"])


def test_a_new_route_brings_the_proxy_along(repo: Path) -> None:
    (repo / "models.yaml").write_text(_catalog(100, extra_route=True))
    jobs = _jobs(repo, "--changed-since", "HEAD")
    assert sorted(jobs) == ["apply", "build-m-new", "collect-1", "deploy-m-new", "test-m-new"]
    assert "factory manifests --proxy" in jobs["apply"]["script"]


def test_nothing_changed_gives_a_valid_pipeline_that_says_so(repo: Path) -> None:
    assert list(_jobs(repo, "--changed-since", "HEAD", "--no-deploy")) == ["nothing-changed"]


def test_nothing_changed_on_the_default_branch_still_records_the_deploy(repo: Path) -> None:
    assert list(_jobs(repo, "--changed-since", "HEAD")) == ["apply"]


def test_without_the_flag_every_model_gets_jobs_and_apply_needs_at_most_50(repo: Path) -> None:
    jobs = _jobs(repo)
    assert len(jobs) == 3 * 100 + 2 + 1
    assert [len(jobs[name]["needs"]) for name in ("collect-1", "collect-2")] == [50, 50]
    assert jobs["apply"]["dependencies"] == []
    assert jobs["apply"]["script"][0] == "factory fetch-artifacts collect-1 collect-2"


def test_an_unsafe_ref_is_refused(repo: Path) -> None:
    result = CliRunner().invoke(main, ["render", "-f", str(repo / "models.yaml"), "-o", str(repo / "b"),
                                       "--changed-since", "main; rm -rf /"])
    assert result.exit_code == 1
    assert result.output.startswith("--changed-since 'main; rm -rf /': not a plain git ref")
    assert not (repo / "b").exists()


def _commit(repo: Path, message: str) -> str:
    _git(repo, "commit", "-qam", message)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def _model_jobs(jobs: dict) -> set[str]:
    return {name.split("-", 1)[1] for name in jobs if name.startswith("build-")}


def test_a_merge_request_diffs_against_the_merge_base_not_the_moved_target(repo: Path) -> None:
    _git(repo, "branch", "-M", "main")
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    _git(repo, "checkout", "-qb", "feature")
    (repo / "models.yaml").write_text(_catalog(100, changed=7))
    _commit(repo, "feature: m_7")
    _git(repo, "checkout", "-q", "main")
    (repo / "models.yaml").write_text(_catalog(100, changed=3))
    _commit(repo, "main moved: m_3")
    _git(repo, "checkout", "-q", "feature")
    assert _model_jobs(_jobs(repo, "--changed-since", base, "--no-deploy")) == {"m-7"}
    assert _model_jobs(_jobs(repo, "--changed-since", "main", "--no-deploy")) == {"m-3", "m-7"}


ALIAS_CATALOG = yaml.safe_dump({"models": [
    {"name": "m_alias", "alias": "champion", "endpoint": "a"},
    {"name": "m_pinned", "version": 1, "endpoint": "p"}]})


@pytest.mark.parametrize("recorded, now, changed, kept", [
    ({"m_alias": 3}, 3, set(), {"m_alias": 3}),  # the alias still points where it did: no jobs
    ({"m_alias": 3}, 4, {"m_alias"}, {}),  # promoted in the registry since the last deploy
    (None, 3, {"m_alias"}, {}),  # no record of a deploy: it may never have been deployed
    ({}, 3, {"m_alias"}, {}),
])
def test_an_alias_model_gets_jobs_only_when_its_alias_moved(tmp_path: Path, recorded, now, changed, kept) -> None:
    (tmp_path / "models.yaml").write_text(ALIAS_CATALOG)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "models.yaml")
    _git(tmp_path, "commit", "-qm", "aliases")
    catalog = load_catalog(tmp_path / "models.yaml")
    previous = None if recorded is None else DeployRecord("abc1234", recorded)
    asked = []

    def resolve(model):
        asked.append(model.name)
        return now

    change = changed_since(catalog, tmp_path / "models.yaml", "HEAD",
                           lambda c, templates: render_catalog(c, "models.yaml"), previous, resolve)
    assert (set(change.models), change.kept_versions, asked) == (changed, kept, ["m_alias"])


FACTORY_TREE = ("factory", "templates", "requirements.lock", "pyproject.toml")
SMALL_CATALOG = yaml.safe_dump({"models": [{"name": f"m_{i}", "version": 1, "endpoint": "p", "parameters": [str(i)]}
                                           for i in range(3)]})


@pytest.fixture(scope="module")
def factory_repo(tmp_path_factory) -> Path:
    """A repository holding the factory itself, as this one does: templates and code are diffed too."""
    repo = tmp_path_factory.mktemp("factory-repo")
    for name in FACTORY_TREE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (repo / name).write_bytes(source.read_bytes())
    (repo / "models.yaml").write_text(SMALL_CATALOG)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "factory")
    return repo


def _edit(repo: Path, name: str, old: str, new: str) -> str:
    path = repo / name
    text = path.read_text() if path.exists() else ""
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return text


EVERY = {"m-0", "m-1", "m-2"}


@pytest.mark.parametrize("name, old, new, models, proxy", [
    ("README.md", "", "# notes\n", set(), False),
    ("templates/k8s/service.yaml.j2", "\n", "\n# edited\n", EVERY, True),  # models' and the proxy's Services
    ("templates/k8s/proxy-configmap.yaml.j2", "\n", "\n# edited\n", set(), True),
    ("templates/bento/service.py.j2", "\n", "\n# edited\n", EVERY, False),
    ("templates/pipeline/child-pipeline.yml.j2", "expire_in: 30 days", "expire_in: 31 days", EVERY, False),
    ("factory/summary.py", "\n", "\n# edited\n", EVERY, True),
])
def test_every_template_and_the_factory_itself_count(factory_repo: Path, name, old, new, models, proxy) -> None:
    original = _edit(factory_repo, name, old, new)
    try:
        result = subprocess.run([sys.executable, "-m", "factory.cli", "render", "-o", "build", "--changed-since", "HEAD"],
                                cwd=factory_repo, env={**os.environ, "PYTHONPATH": str(factory_repo)},
                                capture_output=True, text=True)
    finally:
        if original:
            (factory_repo / name).write_text(original)
        else:
            (factory_repo / name).unlink()
    assert result.returncode == 0, result.stderr
    jobs = yaml.safe_load((factory_repo / "build" / "child-pipeline.yml").read_text())
    assert _model_jobs(jobs) == models
    assert ("factory manifests --proxy" in jobs["apply"]["script"]) == proxy


@pytest.mark.parametrize("text, message", [
    ("{", "not a deploy record"),
    ('{"commit": "main"}', "field 'commit' must be a git commit hash (got 'main')"),
    ('{"commit": "abc1234", "versions": {"m": "3"}}', "field 'versions' must map model names to registry versions"),
    ('{"commit": "abc1234", "versions": {"m": 0}}', "field 'versions' must map model names to registry versions"),
    pytest.param("[" * 100_000, "not a deploy record (nested too deeply)", id="nested-too-deeply"),
    # A directory was taken for "no record", so every model was deployed.
    pytest.param(None, "not a deploy record (is a directory)", id="a-directory"),
])
def test_a_bad_deploy_record_is_refused_with_its_fix(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "deployed.json").mkdir() if text is None else (tmp_path / "deployed.json").write_text(text)
    with pytest.raises(DeployError) as error:
        DeployRecord.load(tmp_path / "deployed.json")
    assert str(error.value).startswith(f"{tmp_path / 'deployed.json'}: {message}")
    assert "delete" in str(error.value)


def _record_deploy(tmp_path: Path, kept: str, commit: str = "abc1234") -> object:
    (tmp_path / "models.yaml").write_text(ALIAS_CATALOG)
    return CliRunner().invoke(main, ["record-deploy", "-f", str(tmp_path / "models.yaml"), "--commit", commit,
                                     "-o", str(tmp_path / "out" / "deployed.json")],
                              env={"FACTORY_STATE": str(tmp_path / "state"), "FACTORY_KEPT_VERSIONS": kept})


def test_record_deploy_merges_this_pipelines_builds_with_the_kept_aliases(tmp_path: Path) -> None:
    result = _record_deploy(tmp_path, "m_alias=5")
    assert result.exit_code == 0, result.output
    assert DeployRecord.load(tmp_path / "out" / "deployed.json") == DeployRecord("abc1234", {"m_alias": 5})
    record = tmp_path / "state" / "builds" / "m_alias" / "record.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"model": "m_alias", "content_hash": "h", "registry": {"version": 6},
                                  "bento_model_tag": "", "bento_tag": "", "bento_export": "", "image": "",
                                  "dockerfile": "", "golden": ""}))
    assert _record_deploy(tmp_path, "").exit_code == 0
    assert DeployRecord.load(tmp_path / "out" / "deployed.json").versions == {"m_alias": 6}


@pytest.mark.parametrize("kept, commit, message", [
    ("", "abc1234", "alias models neither built by this pipeline nor kept: m_alias; the record would be incomplete"),
    ("m_pinned=1", "abc1234", "FACTORY_KEPT_VERSIONS: 'm_pinned=1' is not `alias_model=version` for an alias model"),
    ("m_alias=x", "abc1234", "FACTORY_KEPT_VERSIONS: 'm_alias=x' is not `alias_model=version`"),
    ("m_alias=1", "HEAD; rm -rf /", "--commit 'HEAD; rm -rf /': not a git commit hash"),
])
def test_record_deploy_refuses_an_incomplete_or_unsafe_record(tmp_path: Path, kept: str, commit: str,
                                                             message: str) -> None:
    result = _record_deploy(tmp_path, kept, commit)
    assert result.exit_code == 1
    assert result.output.startswith(message)
    assert not (tmp_path / "out").exists()
