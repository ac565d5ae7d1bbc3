"""Which models changed since a git ref: merge-request and default-branch pipelines build only those.

A model changed when anything rendered for it differs between the ref and the working tree: its
Bento folder, its Kubernetes manifests, its jobs in the child pipeline (so effective config and
every template count: the ref's own templates render the old side). Files every model shares (the
Bento runtime, the child pipeline's defaults) or a different factory (its code, requirements.lock,
pyproject.toml) change every model; routes.yaml and the proxy's manifests change the proxy.
A model served through an alias changed when the registry now resolves it to another version
than the last deploy recorded (see DeployRecord); with no record, it counts as changed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import yaml

from factory import archives
from factory.catalog import Catalog, ModelSpec
from factory.errors import FactoryError, RenderError
from factory.loader import parse_catalog
from factory.pipeline import SHARD_DIR

if TYPE_CHECKING:
    from factory.deploy_record import DeployRecord

SAFE_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/@~^-]{0,199}")
FACTORY_FILES = ("factory", "requirements.lock", "pyproject.toml")
MODEL_JOB = re.compile(r"(?:build|test|deploy)-(.+)")
SHARED_PREFIXES = ("bento-runtime/",)
PROXY_PREFIXES = ("routes.yaml", "k8s/proxy/")
Render = Callable[[Catalog, Optional[Path]], dict[str, str]]
Resolve = Callable[[ModelSpec], int]


@dataclass(frozen=True)
class ChangeSet:
    models: frozenset[str]
    proxy: bool
    reason: str
    # Alias models left out, with the registry version they stay deployed at (for the next record).
    kept_versions: dict[str, int] = field(default_factory=dict)


def kept_versions_text(kept: dict[str, int]) -> str:
    """The child pipeline carries the alias models it does not rebuild as `name=version ...`."""
    return " ".join(f"{name}={version}" for name, version in sorted(kept.items()))


def everything(catalog: Catalog, reason: str) -> ChangeSet:
    # The reason lands in a YAML comment of the child pipeline: keep it to one plain line.
    return ChangeSet(frozenset(m.name for m in catalog.models), True,
                     "every model: " + re.sub(r"[^A-Za-z0-9 ./:_@~^-]", "?", reason))


def changed_since(catalog: Catalog, catalog_path: Path, ref: str, render: Render,
                  previous: Optional["DeployRecord"], resolve: Resolve) -> ChangeSet:
    """`render(catalog, templates or None)` renders in process with this factory (None: its own templates)."""
    if not SAFE_REF.fullmatch(ref):
        raise RenderError(f"--changed-since {ref!r}: not a plain git ref; use a branch, tag or commit such as "
                          "origin/main")
    root = Path(_git(catalog_path.parent, "rev-parse", "--show-toplevel").strip()).resolve()
    relative = catalog_path.resolve().relative_to(root).as_posix()
    with tempfile.TemporaryDirectory(prefix="factory-ref-") as scratch:
        old_root = Path(scratch) / "ref"
        if not _extract(root, ref, [relative, "templates", *FACTORY_FILES], old_root):
            return everything(catalog, f"{ref} is not in this clone (fetch it, or unshallow the clone)")
        if not (old_root / relative).is_file():
            return everything(catalog, f"{relative} does not exist at {ref}")
        if _factory_fingerprint(old_root) != _factory_fingerprint(root):
            return everything(catalog, f"the factory itself changed since {ref}")
        try:
            old = _render_old(old_root, relative, render)
        except FactoryError:
            return everything(catalog, f"{relative} or templates at {ref} do not render")
    new = render(catalog, None)
    return _compare(catalog, ref, old, new, previous, resolve)


def _compare(catalog: Catalog, ref: str, old: dict[str, str], new: dict[str, str],
             previous: Optional["DeployRecord"], resolve: Resolve) -> ChangeSet:
    old_jobs, old_shared = _pipeline_parts(old)
    new_jobs, new_shared = _pipeline_parts(new)
    if _matching(old, SHARED_PREFIXES) != _matching(new, SHARED_PREFIXES) or old_shared != new_shared:
        return everything(catalog, "files shared by every model changed")
    changed, kept = set(), {}
    for model in catalog.models:
        prefixes = (f"models/{model.name}/", f"k8s/{model.k8s_name}/")
        if (_matching(old, prefixes) != _matching(new, prefixes)
                or old_jobs.get(model.k8s_name) != new_jobs.get(model.k8s_name)):
            changed.add(model.name)
        elif model.alias is not None:
            version = resolve(model)
            if previous is None or previous.versions.get(model.name) != version:
                changed.add(model.name)
            else:
                kept[model.name] = version
    proxy = _matching(old, PROXY_PREFIXES) != _matching(new, PROXY_PREFIXES)
    return ChangeSet(frozenset(changed), proxy, f"{len(changed)} of {len(catalog.models)} models changed since "
                                                f"{ref[:40]}", kept)


def _render_old(old_root: Path, relative: str, render: Render) -> dict[str, str]:
    """The ref's side, rendered by the ref's factory with the ref's templates when the repository holds them."""
    if not (old_root / "factory").is_dir():
        old_catalog = parse_catalog((old_root / relative).read_text(encoding="utf-8"), relative)
        templates = old_root / "templates"
        return render(old_catalog, templates if templates.is_dir() else None)
    # Same factory code (the fingerprints match), but its template paths are fixed relative to the
    # package: run it from the ref's tree so every template (Bento, Kubernetes, pipeline) is the ref's.
    out = old_root.parent / "rendered"
    env = {**os.environ, "PYTHONPATH": str(old_root)}
    result = subprocess.run([sys.executable, "-m", "factory.cli", "render", "-f", str(old_root / relative),
                             "-o", str(out)], cwd=old_root, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return {path.relative_to(out).as_posix(): path.read_text(encoding="utf-8")
            for path in out.rglob("*") if path.is_file()}


def _pipeline_parts(files: dict[str, str]) -> tuple[dict[str, dict], dict]:
    """The child pipeline split into each model's jobs (by slug) and what every model shares."""
    jobs: dict[str, dict] = {}
    shared = {}
    # Past pipeline.models_per_child the model jobs live in shard files: a model moving shard is no change.
    names = ["child-pipeline.yml", *sorted(name for name in files if name.startswith(f"{SHARD_DIR}/"))]
    for name, value in (item for part in names for item in (yaml.safe_load(files.get(part, "")) or {}).items()):
        match = MODEL_JOB.fullmatch(name)
        if match:
            jobs.setdefault(match.group(1), {})[name] = value
        elif name in ("stages", "variables", "default", "workflow", "include") or name.startswith("."):
            shared[name] = value
    return jobs, shared


def _matching(files: dict[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    return {name: text for name, text in files.items() if name.startswith(prefixes)}


def _factory_fingerprint(root: Path) -> Optional[str]:
    """What makes this factory behave as it does: its code and pinned dependencies (None: not in this tree)."""
    if not (root / "factory").is_dir():
        return None
    digest = hashlib.sha256()
    files = sorted((root / "factory").rglob("*.py")) + [root / name for name in FACTORY_FILES[1:]]
    for path in files:
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _extract(root: Path, ref: str, paths: list[str], target: Path) -> bool:
    """The paths of `ref` that exist there, under `target`; False when the ref itself is unknown."""
    try:
        _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except RenderError:
        return False
    listed = _git(root, "ls-tree", "--name-only", ref, "--", *paths).split()
    target.mkdir(parents=True)
    if listed:
        archive = subprocess.run(["git", "archive", ref, "--", *listed], cwd=root, capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            archives.unpack(tar, target)
    return True


def _git(cwd: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RenderError(f"git {' '.join(args)} failed in {cwd}: {detail.strip()}; --changed-since needs a git "
                          "checkout that has the ref (in CI: git fetch origin <target branch>)") from exc
