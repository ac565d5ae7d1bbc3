"""Run a pipeline with gitlab-ci-local in a scratch copy of the repository, and judge it for real.

gitlab-ci-local exits 0 when a job of a dynamic child pipeline fails (FIELD_NOTES): the verdict
here also reads its per-job summary lines, so a failed child job fails the run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from e2e_support.gitlab_api import TOKEN, GitLabArtifactsApi

ROOT = Path(__file__).resolve().parents[2]
GITLAB_CI_LOCAL = ROOT / ".tools" / "node_modules" / ".bin" / "gitlab-ci-local"
# The summary: " PASS  render", " FAIL  planted-failure", " PASS  [child] -> good-job".
STATE_DIR = "gitlab-ci-local-state"
JOB_LINE = re.compile(r"^\s*(PASS|FAIL)\s+(?:\[[^\]]*\]\s*->\s*)?(\S+)", re.M)


@dataclass(frozen=True)
class PipelineRun:
    exit_code: int
    output: str

    @property
    def jobs(self) -> dict[str, str]:
        """Job name → PASS / FAIL, from the summary gitlab-ci-local prints at the end."""
        return {name: verdict for verdict, name in JOB_LINE.findall(_plain(self.output))}

    @property
    def failed_jobs(self) -> list[str]:
        return sorted(name for name, verdict in self.jobs.items() if verdict == "FAIL")

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.failed_jobs and bool(self.jobs)


def scratch_repository(target: Path, files: dict[str, str] | None = None) -> Path:
    """The project's files (or `files`) committed in a fresh git repository at `target`: a GitLab pipeline runs on
    a commit, and gitlab-ci-local needs a repository, even where the project came as a source archive."""
    target.mkdir(parents=True)
    names = files or {name: None for name in project_files(ROOT)}
    for name, text in names.items():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            shutil.copy2(ROOT / name, destination)
        else:
            destination.write_text(text)
    git(target, "init", "-q", "-b", "main")
    (target / ".git" / "info" / "exclude").write_text(f"/{STATE_DIR}/\n")
    commit(target, "scratch")
    return target


def project_files(root: Path) -> list[str]:
    """The files git tracks in a checkout; in an unpacked source archive (no .git), every file its .gitignore
    does not exclude (git answering against an empty repository), so venvs and build output stay out."""
    if (root / ".git").exists():
        listed = git(root, "ls-files", "-z")
    else:
        with tempfile.TemporaryDirectory() as empty:
            git(Path(empty), "init", "-q")
            listed = git(root, f"--git-dir={empty}/.git", f"--work-tree={root}", "ls-files", "-z", "--others",
                         "--exclude-standard")
    return [name for name in listed.split("\0") if name]  # -z: names as they are, spaces and accents unquoted


def git(repository: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repository, check=True,
                          capture_output=True, text=True).stdout.strip()


def commit(repository: Path, message: str) -> str:
    git(repository, "add", "-A")
    git(repository, "commit", "-qm", message)
    return git(repository, "rev-parse", "HEAD")


@contextmanager
def artifacts_api(repository: Path, env: dict[str, str]) -> Iterator[GitLabArtifactsApi]:
    """GitLab's job artifacts API over what gitlab-ci-local stores: jobs reach it as $CI_API_V4_URL, which
    gitlab-ci-local derives from the `origin` remote (parent and child jobs alike), with a read_api token."""
    with GitLabArtifactsApi(repository / STATE_DIR / "artifacts") as api:
        git(repository, "remote", "add", "origin", f"{api.url}/group/project.git")
        env["FACTORY_API_TOKEN"] = TOKEN
        yield api


def run_pipeline(repository: Path, env: dict[str, str], *extra: str, timeout: float = 900) -> PipelineRun:
    """Every job in a fresh copy of the repository, in the shell (GitLab would use each job's image).

    The copies live under a state directory that is not hidden: BentoML refuses to build under one.
    """
    result = subprocess.run([str(GITLAB_CI_LOCAL), "--concurrency", "2", "--shell-isolation", "--force-shell-executor",
                             "--state-dir", STATE_DIR, *extra], cwd=repository, env=env, capture_output=True, text=True,
                            timeout=timeout)
    return PipelineRun(result.returncode, result.stdout + result.stderr)


def artifact(repository: Path, job: str, path: str) -> Path:
    """Where gitlab-ci-local keeps a job's artifact file."""
    return repository / STATE_DIR / "artifacts" / job / path


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
