"""`factory fetch-artifacts`: earlier jobs' outputs through GitLab's job artifacts API.

Jobs of the child pipeline declare `needs: [{job: ..., artifacts: false}]`: GitLab then orders them
but never refuses to start one whose input artifact expired or was erased (`missing_dependency_failure`
is raised only for needs that download artifacts). The job fetches the artifact itself here; when it
is gone (404/410), or no token may read it, the job regenerates it from git and the registry.

Endpoints (GitLab REST v4): `GET /projects/:id/pipelines/:pipeline_id/jobs` (find the job by name)
and `GET /projects/:id/jobs/:job_id/artifacts` (its zip).
"""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from factory import atomic
from factory.errors import UsageError, WriteError

Progress = Callable[[str], None]
TIMEOUT_S = 60
PAGE_SIZE = 100
MAX_PAGES = 50  # 5,000 jobs: far above GitLab's jobs-per-pipeline limits
JOB_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,254}")
GONE = (404, 410)


@dataclass(frozen=True)
class GitLabApi:
    url: str
    project: str
    pipeline: str
    header: tuple[str, str]

    @classmethod
    def configured(cls, url: str, project: str, pipeline: str, api_token: str, job_token: str) -> Optional["GitLabApi"]:
        """None when this job cannot reach the API (no URL or no token): every input is then regenerated."""
        if not (url and project and pipeline and (api_token or job_token)):
            return None
        header = ("PRIVATE-TOKEN", api_token) if api_token else ("JOB-TOKEN", job_token)
        return cls(url.rstrip("/"), urllib.parse.quote(project, safe=""), pipeline, header)

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(f"{self.url}/projects/{self.project}/{path}", headers=dict([self.header]))
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read()


def fetch_artifacts(api: Optional[GitLabApi], jobs: list[str], target: Path, progress: Progress) -> list[str]:
    """Extract each named job's artifacts under `target`; the names of the jobs whose artifacts arrived."""
    bad = [job for job in jobs if not JOB_NAME.fullmatch(job)]
    if bad:
        raise UsageError(f"fetch-artifacts: {', '.join(map(repr, bad))} are not GitLab job names of the child "
                           "pipeline (lowercase letters, digits, '-')")
    if api is None:
        progress("no GitLab API token in this job (FACTORY_API_TOKEN, CI_JOB_TOKEN): outputs of earlier jobs are "
                 "regenerated from git and the registry")
        return []
    try:
        ids = _successful_jobs(api)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        progress(f"cannot list the jobs of pipeline {api.pipeline} ({_reason(exc)}): outputs of earlier jobs are "
                 f"regenerated from git and the registry{_token_hint(api, exc)}")
        return []
    fetched = []
    for job in jobs:
        if job in ids and _fetch_one(api, job, ids[job], target, progress):
            fetched.append(job)
        elif job not in ids:
            progress(f"{job}: no successful run in pipeline {api.pipeline}; its outputs are regenerated")
    return fetched


def _successful_jobs(api: GitLabApi) -> dict[str, int]:
    """Job name → id of its latest successful run in this pipeline (a retried job appears more than once)."""
    ids: dict[str, int] = {}
    for page in range(1, MAX_PAGES + 1):
        listed = json.loads(api.get(f"pipelines/{api.pipeline}/jobs?scope[]=success&per_page={PAGE_SIZE}&page={page}"))
        if not isinstance(listed, list):
            raise ValueError("the jobs list is not a JSON array")
        for job in listed:
            if isinstance(job, dict) and isinstance(job.get("name"), str) and isinstance(job.get("id"), int):
                ids[job["name"]] = max(job["id"], ids.get(job["name"], 0))
        if len(listed) < PAGE_SIZE:
            break
    return ids


def _fetch_one(api: GitLabApi, job: str, job_id: int, target: Path, progress: Progress) -> bool:
    try:
        archive = api.get(f"jobs/{job_id}/artifacts")
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            _check_members(zipped)
            members = {target / info.filename: zipped.read(info) for info in zipped.infolist() if not info.is_dir()}
        # All of a job's files or none: a record must not arrive without its golden predictions.
        atomic.replace_files(members, "run the job in a writable working directory")
    except WriteError as exc:
        progress(f"{job}: artifacts could not be written: {exc}; its outputs are regenerated")
        return False
    except urllib.error.HTTPError as exc:
        why = "expired or erased" if exc.code in GONE else "not readable with this job's token"
        progress(f"{job}: artifacts {why} (HTTP {exc.code}); its outputs are regenerated from git and the registry")
        return False
    except (urllib.error.URLError, OSError, zipfile.BadZipFile, ValueError) as exc:
        progress(f"{job}: artifacts could not be fetched ({_reason(exc)}); its outputs are regenerated")
        return False
    progress(f"{job}: artifacts fetched (job {job_id})")
    return True


def _token_hint(api: GitLabApi, exc: Exception) -> str:
    """How to let the next pipeline fetch instead of regenerating, when the token was what GitLab refused."""
    if not isinstance(exc, urllib.error.HTTPError) or exc.code not in (401, 403):
        return ""
    if api.header[0] == "JOB-TOKEN":  # GitLab documents which endpoints a job token reaches: not the jobs list
        return ("; GitLab's CI_JOB_TOKEN may not list a pipeline's jobs on any tier: to fetch artifacts instead, set "
                "FACTORY_API_TOKEN, a read_api token, as a masked CI/CD variable")
    return "; FACTORY_API_TOKEN was refused: it needs the read_api scope and at least the Reporter role in this project"


def _check_members(zipped: zipfile.ZipFile) -> None:
    """Only the factory's own state may arrive: no absolute paths, no `..`, nothing outside factory-state/."""
    for name in zipped.namelist():
        parts = Path(name).parts
        if name.startswith("/") or ".." in parts or not parts or parts[0] != "factory-state":
            raise ValueError(f"unexpected member {name!r} in the artifacts archive")


def _reason(exc: Exception) -> str:
    return " ".join(str(getattr(exc, "reason", exc)).split())[:200]
