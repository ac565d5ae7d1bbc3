"""`factory render`: models.yaml → Bento folders, child pipeline, routing table, base manifests.

Rendering is a pure function from (catalog, templates) to a {relative path: text} mapping; writing
is a separate, atomic step, so a failure anywhere leaves the output directory untouched.
"""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import jinja2
import yaml

from factory import atomic, manifests
from factory.catalog import Catalog, ModelSpec
from factory.changes import ChangeSet, changed_since, everything, kept_versions_text
from factory.errors import OutOfDateError, RenderError
from factory.loader import load_catalog
from factory.pipeline import (MAX_NEEDS, MAX_SHARDS, SHARD_DIR, check_child_pipeline, check_size, collectors,
                              model_jobs, shards)
from factory.routes import routes_shards, routes_yaml

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
RUNTIME_DIR = "bento-runtime"
ROUTES_CONFIGMAP = "/routes-"  # k8s/proxy/routes-NNN.yaml
RUNTIME_FILES = ("mf_runtime.py", "mf_serve.py", "mf_flavors.py", "mf_inputs.py", "mf_http.py", "mf_batch.py",
                 "mf_fast.py", "mf_schema.py", "mf_decode.py", "mf_lag.py", "mf_protocol.py")
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class RenderSummary:
    out_dir: Path
    files: int
    changed: bool


def render_file(catalog_path: Path, out_dir: Path, check: bool = False,
                changed_since_ref: Optional[str] = None, last_deploy: Optional[Path] = None,
                deploy: bool = True) -> RenderSummary:
    """Load models.yaml and write (or, with `check`, compare) the whole rendered tree.

    With `changed_since_ref`, or with a `last_deploy` record (whose commit is then the ref), the child
    pipeline holds jobs only for models changed since; without a record file, for every model.
    Without `deploy`, it builds and tests but holds no apply job (merge requests, tags).
    """
    catalog = load_catalog(catalog_path)
    changes = _changes(catalog, catalog_path, changed_since_ref, last_deploy)
    files = render_catalog(catalog, source=catalog_path.name, changes=changes, deploy=deploy,
                           pinned=_pinned(catalog, catalog_path, changes) if deploy else None)
    if check:
        check_tree(files, out_dir)
        return RenderSummary(out_dir.resolve(), len(files), changed=False)
    return write_tree(files, out_dir)


def _changes(catalog: Catalog, catalog_path: Path, ref: Optional[str],
             last_deploy: Optional[Path]) -> Optional[ChangeSet]:
    from factory.deploy_record import DeployRecord

    previous = DeployRecord.load(last_deploy) if last_deploy else None
    if ref is None and last_deploy is not None:
        if previous is None:
            return everything(catalog, f"no record of a previous deploy at {last_deploy.name}")
        ref = previous.commit
    if ref is None:
        return None
    return changed_since(catalog, catalog_path, ref,
                         lambda c, templates: render_catalog(c, catalog_path.name, templates or TEMPLATES),
                         previous, _resolver(catalog, catalog_path))


def _pinned(catalog: Catalog, catalog_path: Path, changes: Optional[ChangeSet]) -> Optional[dict[str, int]]:
    """Alias models that get jobs, at their registry version now, when the pipeline is sharded (a shard's
    build records never reach the dispatcher's `apply`, so the record names the pinned versions instead)."""
    rebuilt = [m for m in catalog.models if changes is None or m.name in changes.models]
    if len(rebuilt) <= catalog.pipeline.models_per_child:
        return None
    resolve = _resolver(catalog, catalog_path)
    return {model.name: resolve(model) for model in rebuilt if model.alias is not None}


def _resolver(catalog: Catalog, catalog_path: Path):
    """Registry versions of alias models, looked up (importing MLflow) only when first asked."""
    registry = []

    def resolve(model: ModelSpec) -> int:
        if not registry:
            from factory.registry import Registry, registry_uris

            registry.append(Registry(catalog, *registry_uris(catalog_path.resolve().parent)))
        return registry[0].resolve(model).version

    return resolve


def environment(templates: Path = TEMPLATES) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), undefined=jinja2.StrictUndefined,
                              autoescape=False, keep_trailing_newline=True, trim_blocks=True,
                              lstrip_blocks=True)


def render_catalog(catalog: Catalog, source: str = "models.yaml", templates: Path = TEMPLATES,
                   changes: Optional[ChangeSet] = None, deploy: bool = True,
                   pinned: Optional[dict[str, int]] = None) -> dict[str, str]:
    env = environment(templates)
    # The runtime files are the same for every model: written once, copied into each Bento by build.
    files: dict[str, str] = {f"{RUNTIME_DIR}/{name}": _static(templates, f"bento/{name}") for name in RUNTIME_FILES}
    for model in catalog.models:
        files.update(_bento_folder(env, model, source))
    files.update(child_pipeline(catalog, source, changes, deploy, env, pinned))
    files["routes.yaml"] = routes_yaml(catalog, source)
    files.update(_base_manifests(catalog, routes_shards(catalog, source)))
    return files


def child_pipeline(catalog: Catalog, source: str = "models.yaml", changes: Optional[ChangeSet] = None,
                   deploy: bool = True, env: Optional[jinja2.Environment] = None,
                   pinned: Optional[dict[str, int]] = None) -> dict[str, str]:
    """`child-pipeline.yml` (and, past pipeline.models_per_child models, the shard children it dispatches),
    each checked against GitLab's limits. `pinned`: alias models at the version the render job resolved."""
    env = env or environment()
    jobs = model_jobs(m for m in catalog.models if changes is None or m.name in changes.models)
    kept = dict(changes.kept_versions) if changes else {}
    # Jobs that build images (a model's build job, an apply that builds the proxy) get the engine service.
    image_job = [".factory-job", ".image-engine"] if catalog.pipeline.docker_service else ".factory-job"
    context = dict(catalog_file=source, deploy=deploy, max_needs=MAX_NEEDS, settings=catalog.pipeline,
                   image_job=image_job, proxy=changes is None or changes.proxy, pinned=kept_versions_text(pinned or {}),
                   scope=changes.reason if changes else f"all {len(catalog.models)} models")
    parts = shards(jobs, catalog.pipeline.models_per_child)
    if not parts:
        return {"child-pipeline.yml": _pipeline(env, "child-pipeline.yml", "pipeline/child-pipeline.yml.j2", jobs=jobs,
                                                collectors=collectors(jobs), record=True, shard=None,
                                                kept_versions=kept_versions_text(kept), **context)}
    if len(parts) > MAX_SHARDS:
        raise RenderError(f"{len(jobs)} models need {len(parts)} shard pipelines; at most {MAX_SHARDS} are dispatched "
                          "(GitLab's downstream limits): raise pipeline.models_per_child in models.yaml")
    files = {shard.path: _pipeline(env, shard.path, "pipeline/child-pipeline.yml.j2", jobs=list(shard.jobs),
                                   collectors=collectors(list(shard.jobs)), record=False, shard=shard,
                                   shard_count=len(parts), kept_versions="", **context)
             for shard in parts}
    files["child-pipeline.yml"] = _pipeline(env, "child-pipeline.yml", "pipeline/dispatcher.yml.j2", shards=parts,
                                            shard_dir=SHARD_DIR, archive=pack_shards(files),
                                            kept_versions=kept_versions_text({**kept, **(pinned or {})}), **context)
    return files


def _pipeline(env: jinja2.Environment, name: str, template: str, **context) -> str:
    text = _template(env, template, **context)
    check_size(name, text)
    _check_child_pipeline(text)
    return text


def pack_shards(files: dict[str, str]) -> str:
    """The shard files as a reproducible gzip'd tar in base64 (fixed times and owners: same input, same text)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(files):
                data = files[name].encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    # Lines of 76 characters (as `base64` writes them), indented for the YAML block the template puts them in.
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return "\n      ".join(encoded[start:start + 76] for start in range(0, len(encoded), 76))


def _bento_folder(env: jinja2.Environment, model: ModelSpec, source: str) -> dict[str, str]:
    folder = f"models/{model.name}"
    context = {"model": model, "source": source, "runtime_files": RUNTIME_FILES}
    return {
        f"{folder}/service.py": _template(env, "bento/service.py.j2", **context),
        f"{folder}/bentofile.yaml": _template(env, "bento/bentofile.yaml.j2", **context),
    }


def _base_manifests(catalog: Catalog, shards: list[str]) -> dict[str, str]:
    """A preview of every manifest, never deployable: no image is known before `factory build` pushes one, so
    the Deployments carry none (the API server refuses them) and there is no kustomization.yaml to apply.
    `factory manifests` writes the deployable set, images by digest, under the state directory."""
    settings = catalog.kubernetes
    files: dict[str, str] = {}
    for model in catalog.models:
        files.update(manifests.model_manifests(model, settings, None, manifests.sizing_for(model, None)))
    proxy = manifests.proxy_manifests(settings, None, shards)
    # The routing table's size limits live in its ConfigMaps; model manifests are covered by their templates' tests.
    manifests.validate_manifests({name: text for name, text in proxy.items() if ROUTES_CONFIGMAP in name})
    files.update(proxy)
    return {f"k8s/{name}": text for name, text in files.items()}


def _template(env: jinja2.Environment, name: str, **context) -> str:
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateError as exc:
        where = f"{getattr(exc, 'filename', None) or name}:{getattr(exc, 'lineno', '?')}"
        raise RenderError(f"template {where}: {exc.message}; fix the template under templates/") from exc


def _static(templates: Path, name: str) -> str:
    return (templates / name).read_text(encoding="utf-8")


def _check_child_pipeline(text: str) -> None:
    """The child pipeline must parse and respect GitLab's limits.

    Other YAML is not parsed back here (it would double render time at thousands of models):
    routes.yaml is dumped from a validated model, templates are covered by property tests, and
    `factory manifests` validates every manifest before writing.
    """
    try:
        pipeline = yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as exc:
        raise RenderError(f"rendered child-pipeline.yml is not valid YAML ({exc}); fix its template") from exc
    check_child_pipeline(pipeline)


# Everything a render writes sits under these names: a directory holding anything else is not ours to replace.
RENDERED_NAMES = frozenset({RUNTIME_DIR, "models", "child-pipeline.yml", SHARD_DIR, "routes.yaml", "k8s"})


def write_tree(files: dict[str, str], out_dir: Path) -> RenderSummary:
    """Replace `out_dir` by exactly `files`, all at once: the new tree is complete before it is swapped in."""
    shown, out_dir = out_dir, out_dir.resolve()
    _check_replaceable(shown, out_dir)
    if _tree_matches(files, out_dir):
        return RenderSummary(out_dir, len(files), changed=False)
    atomic.replace_tree(out_dir, files, "the rendered tree", "pass -o a directory on a writable disk",
                        where=f"-o {shown}")
    return RenderSummary(out_dir, len(files), changed=True)


def _check_replaceable(shown: Path, out_dir: Path) -> None:
    """Render replaces the whole directory: refuse one holding anything a render does not write (`-o .`)."""
    existing = next(path for path in (out_dir, *out_dir.parents) if path.exists())
    if not existing.is_dir():
        what = "is a file" if existing == out_dir else f"is under {existing}, which is a file"
        raise RenderError(f"-o {shown}: {what}, not a directory; pass a directory for the rendered tree "
                          "(it is created if missing)")
    foreign = sorted(entry.name for entry in out_dir.iterdir() if entry.name not in RENDERED_NAMES) \
        if out_dir.is_dir() else []
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise RenderError(f"-o {shown}: holds {', '.join(repr(name) for name in foreign[:3])}{more}, which factory "
                          "render did not write; render replaces the whole directory, so pass a new or empty "
                          "directory (e.g. -o build) or the output of an earlier render")


def stale_files(files: dict[str, str], out_dir: Path) -> list[str]:
    """Files that a fresh render would add, change or remove under `out_dir`."""
    on_disk = _read_tree(out_dir)
    names = set(files) | set(on_disk)
    return sorted(name for name in names if files.get(name) != on_disk.get(name))


def check_tree(files: dict[str, str], out_dir: Path) -> None:
    stale = stale_files(files, out_dir)
    if stale:
        shown = "\n".join(f"  {name}" for name in stale[:20])
        more = f"\n  ... and {len(stale) - 20} more" if len(stale) > 20 else ""
        raise OutOfDateError(f"{out_dir}: {len(stale)} rendered file(s) out of date:\n{shown}{more}\n"
                             f"run `factory render -o {out_dir}` and commit the result")


def _tree_matches(files: dict[str, str], out_dir: Path) -> bool:
    return out_dir.is_dir() and not stale_files(files, out_dir)


def _read_tree(out_dir: Path) -> dict[str, str]:
    if not out_dir.is_dir():
        return {}
    tree = {}
    for path in out_dir.rglob("*"):
        if path.is_file():
            try:
                tree[path.relative_to(out_dir).as_posix()] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                tree[path.relative_to(out_dir).as_posix()] = ""
    return tree
