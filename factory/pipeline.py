"""The GitLab CI child pipeline: jobs per model, and the limits GitLab enforces on them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from factory.catalog import ModelSpec
from factory.errors import RenderError

MAX_NEEDS = 50  # GitLab's default instance limit on one job's `needs`
MAX_CHILD_YAML_BYTES = 5 * 1024 * 1024  # GitLab refuses a larger generated child pipeline
SHARD_DIR = "pipeline-shards"
# GitLab.com starts at most 350 downstream pipelines per minute per project and user; a hierarchy holds
# at most 1,000 pipelines (instance default): past this, raise pipeline.models_per_child instead.
MAX_SHARDS = 350
JOB_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,254}")
RESERVED_KEYS = {"stages", "variables", "default", "include", "workflow", "image", "services", "cache",
                 "before_script", "after_script"}


@dataclass(frozen=True)
class ModelJobs:
    """Names shared by the build, test and deploy jobs of one model."""

    model: str
    slug: str
    gpu: bool


@dataclass(frozen=True)
class Collector:
    """One fan-in job: the deploy jobs of at most MAX_NEEDS models; `apply` takes only the collectors' artifacts."""

    number: int
    jobs: tuple[ModelJobs, ...]


def model_jobs(models: Iterable[ModelSpec]) -> list[ModelJobs]:
    return [ModelJobs(model=model.name, slug=model.k8s_name, gpu=model.resources.gpu > 0) for model in models]


@dataclass(frozen=True)
class Shard:
    """One shard child pipeline: its file under build/ and the models whose jobs it holds."""

    number: int
    path: str
    jobs: tuple[ModelJobs, ...]


def shards(jobs: list[ModelJobs], size: int) -> list[Shard]:
    """None when the jobs fit one child; else consecutive groups of at most `size` models, in catalog order."""
    if len(jobs) <= size:
        return []
    groups = [tuple(jobs[start:start + size]) for start in range(0, len(jobs), size)]
    return [Shard(number, f"{SHARD_DIR}/shard-{number:03d}.yml", group) for number, group in enumerate(groups, start=1)]


def collectors(jobs: list[ModelJobs]) -> list[Collector]:
    groups = [tuple(jobs[start:start + MAX_NEEDS]) for start in range(0, len(jobs), MAX_NEEDS)]
    return [Collector(number, group) for number, group in enumerate(groups, start=1)]


def check_size(name: str, text: str) -> None:
    size = len(text.encode())
    if size > MAX_CHILD_YAML_BYTES:
        raise RenderError(f"{name} is {size:,} bytes; GitLab refuses generated pipelines above "
                          f"{MAX_CHILD_YAML_BYTES:,} bytes; lower pipeline.models_per_child in models.yaml")


def check_child_pipeline(document: Any) -> None:
    """Enforce what GitLab's schema does not: job name charset, `needs` size and targets."""
    if not isinstance(document, dict):
        raise RenderError("child pipeline: rendered document is not a mapping; check templates/pipeline/")
    jobs = {name: job for name, job in document.items()
            if name not in RESERVED_KEYS and not name.startswith(".") and isinstance(job, dict)}
    problems = []
    for name, job in sorted(jobs.items()):
        needs = job.get("needs", [])
        if not JOB_NAME.fullmatch(name):
            problems.append(f"job {name!r}: names must be lowercase letters, digits and '-'")
        if len(needs) > MAX_NEEDS:
            problems.append(f"job {name!r}: {len(needs)} needs; GitLab allows at most {MAX_NEEDS}")
        for need in needs:
            target = need if isinstance(need, str) else need.get("job")
            if target not in jobs:
                problems.append(f"job {name!r}: needs {target!r}, which is not a job in this pipeline")
    if problems:
        raise RenderError("child pipeline is invalid (fix templates/pipeline/child-pipeline.yml.j2):\n"
                          + "\n".join(problems))
