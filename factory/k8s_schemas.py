"""Kubernetes' strict JSON schemas, as bundled with kubernetes-validate, with validators built once.

kubernetes-validate's own `validate()` reloads a 1.4 MB definitions file on every call; here one
validator per (schema set, kind, apiVersion) is built once and reused: under a millisecond a manifest.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Optional

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

from factory.errors import ManifestError

SCHEMA_ROOT = Path(kubernetes_validate.__file__).resolve().parent / "kubernetes-json-schema"
JsonPath = tuple[Any, ...]
Finding = tuple[JsonPath, str]


def schema_dir(k8s_version: str) -> Path:
    wanted = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", k8s_version)
    found = sorted(SCHEMA_ROOT.glob(f"v{wanted[1]}.{wanted[2]}.*-local-strict")) if wanted else []
    if not found:
        bundled = sorted(path.name for path in SCHEMA_ROOT.glob("v*-local-strict"))
        raise ManifestError(f"no strict schemas for Kubernetes {k8s_version!r} in kubernetes-validate "
                            f"{kubernetes_validate.__version__} (bundled: {', '.join(bundled)})")
    return found[-1]


def schema_findings(body: Any, schema_dir: Path) -> Iterator[Finding]:
    if not isinstance(body, dict):
        yield (), "is not a mapping"
        return
    kind, api_version = body.get("kind"), body.get("apiVersion")
    known = isinstance(kind, str) and isinstance(api_version, str)
    validator = _validator(schema_dir, kind, api_version) if known else None
    if validator is None:
        yield (), f"no schema for kind {kind!r} with apiVersion {api_version!r} in {schema_dir.name}"
        return
    for error in validator.iter_errors(body):
        yield tuple(error.absolute_path), error.message


@lru_cache(maxsize=None)
def _validator(schema_dir: Path, kind: str, api_version: str) -> Optional[jsonschema.protocols.Validator]:
    # Both become part of a file name: only plain kind and group/version spellings get that far.
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", kind) or not re.fullmatch(r"(?:[a-z0-9.-]+/)?v[a-z0-9]+", api_version):
        return None
    group, _, version = api_version.rpartition("/")
    # File naming of the bundle: `rbac.authorization.k8s.io/v1` is `rbac-v1`, `v1` stays `v1`.
    suffix = f"{group.split('.')[0]}-{version}" if group else version
    path = schema_dir / f"{kind.lower()}-{suffix}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    # Sub-schemas (container-v1.json, …) are files too, and the file name drops the group's domain.
    declared = schema.get("x-kubernetes-group-version-kind", [])
    if {"group": group, "kind": kind, "version": version} not in declared:
        return None
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return validator_class(schema, registry=_definitions(schema_dir))


@lru_cache(maxsize=None)
def _definitions(schema_dir: Path) -> Registry:
    """Every kind's schema refers into this one file by its `$id`."""
    return Resource.from_contents(json.loads((schema_dir / "_definitions.json").read_text())) @ Registry()
