"""Which models changed against a git ref: the child pipeline of a merge request builds only those.

A model changed when anything rendered for it differs between the ref and the working tree: its
Bento folder or its manifests (so effective config and templates both count). A model served
through an alias is always included: its registry version can move without any commit, and
`factory build` skips it cheaply when the registry still resolves to what it built.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from factory.catalog import Catalog, ModelSpec
from factory.errors import FactoryError, RenderError
from factory.loader import parse_catalog


SAFE_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/@~^-]{0,199}")


@dataclass(frozen=True)
class ChangeSet:
    models: frozenset[str]
    proxy: bool
    reason: str


def changed_since(catalog: Catalog, catalog_path: Path, ref: str, render) -> ChangeSet:
    """`render(catalog, templates or None)` renders a catalog; both sides go through it."""
    if not SAFE_REF.fullmatch(ref):
        raise RenderError(f"--changed-since {ref!r}: not a plain git ref; use a branch, tag or commit such as "
                          "origin/main")
    root = _git(catalog_path.parent, "rev-parse", "--show-toplevel").strip()
    relative = catalog_path.resolve().relative_to(Path(root).resolve()).as_posix()
    everything = ChangeSet(frozenset(m.name for m in catalog.models), True, "")
    try:
        old_text = _git(Path(root), "show", f"{ref}:{relative}")
    except RenderError:
        return _replace(everything, f"{relative} does not exist at {ref}")
    try:
        old_catalog = parse_catalog(old_text, relative)
    except FactoryError:
        return _replace(everything, f"{relative} at {ref} does not validate")
    with tempfile.TemporaryDirectory(prefix="factory-ref-") as scratch:
        old_templates = _templates_at(Path(root), ref, Path(scratch))
        try:
            old = render(old_catalog, old_templates)
        except FactoryError:
            return _replace(everything, f"templates at {ref} do not render")
    new = render(catalog, None)
    if _shared_files(old) != _shared_files(new):
        return _replace(everything, "files shared by every model changed")
    models = frozenset(m.name for m in catalog.models if m.alias or _model_files(old, m) != _model_files(new, m))
    proxy = old.get("routes.yaml") != new.get("routes.yaml")
    return ChangeSet(models, proxy, f"{len(models)} of {len(catalog.models)} models changed since {ref}")


def _replace(change: ChangeSet, reason: str) -> ChangeSet:
    # The reason lands in a YAML comment of the child pipeline: keep it to one plain line.
    return ChangeSet(change.models, change.proxy, "every model: " + re.sub(r"[^A-Za-z0-9 ./:_@~^-]", "?", reason))


def _model_files(files: dict[str, str], model: ModelSpec) -> dict[str, str]:
    prefixes = (f"models/{model.name}/", f"k8s/{model.k8s_name}/")
    return {name: text for name, text in files.items() if name.startswith(prefixes)}


def _shared_files(files: dict[str, str]) -> dict[str, str]:
    return {name: text for name, text in files.items() if name.startswith("bento-runtime/")}


def _templates_at(root: Path, ref: str, scratch: Path) -> Optional[Path]:
    """The ref's templates/, when this repository keeps them; else None (the installed ones)."""
    try:
        archive = subprocess.run(["git", "archive", ref, "templates"], cwd=root, capture_output=True, check=True)
    except subprocess.CalledProcessError:
        return None
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(scratch, filter="data")
    return scratch / "templates"


def _git(cwd: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RenderError(f"git {' '.join(args)} failed in {cwd}: {detail.strip()}; --changed-since needs a git "
                          "checkout that has the ref (in CI: git fetch origin <target branch>)") from exc
