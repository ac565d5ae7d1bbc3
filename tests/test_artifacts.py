"""`factory fetch-artifacts` against GitLab's two job-artifact endpoints, served on 127.0.0.1."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from e2e_support.gitlab_api import TOKEN, GitLabArtifactsApi
from factory import atomic
from factory.artifacts import GitLabApi, fetch_artifacts
from factory.cli import main
from factory.errors import UsageError

RECORD = "factory-state/builds/m/record.json"


@pytest.fixture
def api(tmp_path: Path):
    (tmp_path / "jobs" / "build-m" / RECORD).parent.mkdir(parents=True)
    (tmp_path / "jobs" / "build-m" / RECORD).write_text("{}")
    with GitLabArtifactsApi(tmp_path / "jobs") as server:
        yield server


def _client(server: GitLabArtifactsApi, token: str = TOKEN) -> GitLabApi:
    return GitLabApi.configured(f"{server.url}/api/v4", "1217", "1001", token, "")


def _fetch(client, jobs: list[str], target: Path) -> tuple[list[str], list[str]]:
    messages: list[str] = []
    return fetch_artifacts(client, jobs, target, messages.append), messages


def test_a_jobs_artifacts_arrive_in_the_working_directory(api: GitLabArtifactsApi, tmp_path: Path) -> None:
    fetched, messages = _fetch(_client(api), ["build-m"], tmp_path / "work")
    assert fetched == ["build-m"]
    assert (tmp_path / "work" / RECORD).read_text() == "{}"
    assert messages == [f"build-m: artifacts fetched (job {next(iter(api.jobs()))})"]


def test_the_cli_reads_gitlabs_predefined_variables(api: GitLabArtifactsApi, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"CI_API_V4_URL": f"{api.url}/api/v4", "CI_PROJECT_ID": "1217", "CI_PIPELINE_ID": "1001",
           "FACTORY_API_TOKEN": TOKEN}
    result = CliRunner().invoke(main, ["fetch-artifacts", "build-m"], env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / RECORD).is_file()


@pytest.mark.parametrize("case, message", [
    ("erased", "build-m: artifacts expired or erased (HTTP 404); its outputs are regenerated from git and the "
               "registry"),
    ("job token", "cannot list the jobs of pipeline 1001 (Unauthorized): outputs of earlier jobs are regenerated "
                  "from git and the registry; GitLab's CI_JOB_TOKEN may not list a pipeline's jobs on any tier: to "
                  "fetch artifacts instead, set FACTORY_API_TOKEN, a read_api token, as a masked CI/CD variable"),
    ("wrong token", "cannot list the jobs of pipeline 1001 (Unauthorized): outputs of earlier jobs are regenerated "
                    "from git and the registry; FACTORY_API_TOKEN was refused: it needs the read_api scope and at "
                    "least the Reporter role in this project"),
    ("unknown job", "test-m: no successful run in pipeline 1001; its outputs are regenerated"),
    ("no token", "no GitLab API token in this job (FACTORY_API_TOKEN, CI_JOB_TOKEN): outputs of earlier jobs are "
                 "regenerated from git and the registry"),
    ("no server", "cannot list the jobs of pipeline 1001 ([Errno 111] Connection refused): outputs of earlier jobs "
                  "are regenerated from git and the registry"),
])
def test_what_cannot_be_fetched_is_said_and_left_to_regeneration(api: GitLabArtifactsApi, tmp_path: Path,
                                                                 case: str, message: str) -> None:
    client = _client(api)
    job = "test-m" if case == "unknown job" else "build-m"
    if case == "erased":
        api.erase("build-m")
    elif case == "no token":
        client = GitLabApi.configured(f"{api.url}/api/v4", "1217", "1001", "", "")
    elif case == "no server":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        client = GitLabApi.configured(f"http://127.0.0.1:{port}/api/v4", "1217", "1001", TOKEN, "")
    elif case == "job token":  # used when no API token is set; GitLab refuses it the jobs list, as this API does
        client = GitLabApi.configured(f"{api.url}/api/v4", "1217", "1001", "", "job-token")
    elif case == "wrong token":
        client = GitLabApi.configured(f"{api.url}/api/v4", "1217", "1001", "glpat-revoked", "")
    fetched, messages = _fetch(client, [job], tmp_path / "work")
    assert fetched == []
    assert messages == [message]
    assert not (tmp_path / "work" / RECORD).exists()


def test_an_archive_reaching_outside_the_factory_state_is_refused(api: GitLabArtifactsApi, tmp_path: Path) -> None:
    (api.root / "build-m" / "factory-state").rename(api.root / "build-m" / "other")
    fetched, messages = _fetch(_client(api), ["build-m"], tmp_path / "work")
    assert fetched == []
    assert messages == ["build-m: artifacts could not be fetched (unexpected member 'other/builds/m/record.json' in "
                        "the artifacts archive); its outputs are regenerated"]
    assert not (tmp_path / "work").exists()


def test_a_job_name_that_is_not_one_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as error:
        fetch_artifacts(None, ["build-m", "../x"], Path("."), print)
    assert str(error.value) == ("fetch-artifacts: '../x' are not GitLab job names of the child pipeline (lowercase "
                                "letters, digits, '-')")


def test_a_job_whose_files_cannot_all_be_written_leaves_none(api: GitLabArtifactsApi, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    golden = "factory-state/builds/m/golden.json"
    (tmp_path / "jobs" / "build-m" / golden).write_text("[]")
    written = []
    real_replace = os.replace

    def full_after_one(source, target):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        written.append(target)
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", full_after_one)
    fetched, messages = _fetch(_client(api), ["build-m"], tmp_path / "work")
    assert fetched == [] and len(written) == 1
    assert _files(tmp_path / "work") == []  # the first file arrived and was taken back: never one without the other
    assert messages == [f"build-m: artifacts could not be written: {tmp_path}/work/factory-state/builds/m/record.json: "
                        "cannot write (No space left on device); nothing was changed there: free space on that disk, "
                        "or run the job in a writable working directory; its outputs are regenerated"]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
