"""`factory build`: registry version → BentoML model store → Bento (→ image), one record per model.

The record (`<state>/builds/<model>/record.json`) is what test, manifests and deploy read.
A model whose rendered folder and resolved registry version are unchanged is skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from packaging.requirements import Requirement

from factory import atomic, bento_store, categorical, compiled, dockerapi, golden, onnx_graph, probes
from factory.catalog import Catalog, ModelSpec
from factory.errors import BuildError, FactoryError, StateError
from factory.images import ImageStep
from factory.loader import load_catalog, select_models
from factory.model_env import foreign_versions, graph_runtimes_only, loadable_bytecode, recorded_requirements
from factory.registry import ONNX_MODEL, PYFUNC_PACKAGES, Registry, ResolvedModel, registry_uris
from factory.render import RUNTIME_DIR, render_catalog
from factory.runtime import bento_module, resolve_requirements, runtime_python
from factory.settings import Settings
from factory.state import BuildRecord, ResolvedRecord, StateDir, write_atomic

FACTORY_PACKAGE = Path(__file__).resolve().parent
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildOutcome:
    model: str
    record: Optional[BuildRecord]  # None when the model did not build (`error` says why)
    skipped: bool
    seconds: float
    image_error: str = ""
    error: str = ""


def build_command(catalog_path: Path, names: Iterable[str], everything: bool, progress: Progress,
                  images: bool = True, proxy: bool = False) -> list[BuildOutcome]:
    catalog = load_catalog(catalog_path)
    names = list(names)
    models = [] if proxy and not names and not everything else select_models(catalog, names, everything)
    state = StateDir.from_env().activate()
    image_step = ImageStep(catalog, state, images)
    if image_step.skipped:
        progress(f"images skipped: {image_step.skipped}; wrote Dockerfiles instead (see each build record)")
    builder = Builder(catalog, render_catalog(catalog, source=catalog_path.name),
                      Registry(catalog, *registry_uris(Path.cwd())), state, progress, image_step)
    outcomes = []
    for position, model in enumerate(models, start=1):
        # One model the registry cannot serve (no signature, a version gone) must not stop the others.
        try:
            outcome = builder.build(model)
        except FactoryError as exc:
            outcome = BuildOutcome(model.name, None, skipped=False, seconds=0.0, error=str(exc))
        outcomes.append(outcome)
        progress(f"[{position}/{len(models)}] {model.name}: {_describe(outcome)}")
    proxy_error = image_step.proxy(progress) if proxy else ""
    check_experiment_inputs(catalog, state)
    _raise_failures(outcomes, proxy_error)
    return outcomes


def _raise_failures(outcomes: list[BuildOutcome], proxy_error: str) -> None:
    unbuilt = [outcome.error for outcome in outcomes if outcome.error]
    images = [outcome.image_error for outcome in outcomes if outcome.image_error] + [proxy_error] * bool(proxy_error)
    parts = []
    if unbuilt:
        parts.append(f"{len(unbuilt)} of {len(outcomes)} model(s) did not build:\n" + "\n".join(unbuilt))
    if images:
        parts.append(f"{len(images)} image(s) failed (the other builds are recorded):\n" + "\n".join(images))
    if parts:
        raise BuildError("\n".join(parts))


def check_experiment_inputs(catalog: Catalog, state: StateDir) -> None:
    """Variants of one experiment share a route: a request valid for one must be valid for all."""
    for experiment in catalog.experiments:
        signatures = {}
        for variant in experiment.variants:
            if state.resolved_path(variant.model).is_file():
                signatures[variant.model] = state.resolved(variant.model).signature["inputs"]
        first, *others = list(signatures.items()) or [(None, None)]
        for name, inputs in others:
            if inputs != first[1]:
                raise BuildError(f"{catalog.where(name)}: experiment '{experiment.name}' splits one route between "
                                 f"'{first[0]}' and '{name}', whose MLflow signatures take different inputs; "
                                 "a request valid for one would be refused by the other. Make the variants "
                                 "take the same columns, or serve them on separate routes")


def _describe(outcome: BuildOutcome) -> str:
    if outcome.error:
        return "FAILED, " + outcome.error.replace("\n", "\n  ")
    record = outcome.record
    text = (f"unchanged, skipped ({record.bento_tag}, serves {record.serving_path})" if outcome.skipped
            else f"built {record.bento_tag} in {outcome.seconds:.1f} s, serves {record.serving_path}")
    if outcome.image_error:
        return f"{text}; image FAILED (below)"
    if record.image_built:
        return f"{text}; image {record.image_ref} ({record.image_size_bytes / 2**20:.0f} MiB)"
    return text


class Builder:
    def __init__(self, catalog: Catalog, rendered: dict[str, str], registry: Registry, state: StateDir,
                 progress: Progress, image_step: ImageStep):
        self.catalog = catalog
        self.rendered = rendered
        self.registry = registry
        self.state = state
        self.progress = progress
        self.image_step = image_step

    def build(self, model: ModelSpec) -> BuildOutcome:
        started = time.monotonic()
        resolved = self.registry.resolve(model)
        folder = self._rendered_folder(model)
        # The CPU index is part of what a PyTorch model's Bento installs: a new one is a new build.
        content_hash = _content_hash(folder, resolved, model.serving.model_dump_json() + model.compile.model_dump_json()
                                     + Settings.from_env().torch_cpu_index)
        previous = self._previous(model)
        if previous and previous.content_hash == content_hash and bento_store.restored(previous):
            # An image pushed under another registry (an earlier FACTORY_IMAGE_REGISTRY) is pushed here too.
            pushed_here = previous.image_built and previous.image == self.image_step.tag(model, previous.bento_tag)
            if self.image_step.skipped or (pushed_here and not dockerapi.gone(previous.image_ref)):
                return BuildOutcome(model.name, previous, skipped=True, seconds=time.monotonic() - started)
            if pushed_here:
                self.progress(f"{model.name}: its image {previous.image_ref} is gone from its registry; building it again")
            return self._with_image(model, previous, started, skipped=True)
        if resolved.unsigned:
            self.progress(f"{model.name}: no signature was logged; {onnx_graph.graph_inputs(resolved.signature)}")
        bento_model_tag = self._import(model, resolved)
        model_dir = bento_store.model_dir(bento_model_tag)
        if resolved.flavor.get("model_class") == ONNX_MODEL:  # before anything runs it
            resolved = onnx_graph.prepared(model_dir, resolved, self.catalog.where(model.name),
                                           lambda line: self.progress(f"{model.name}: {line}"))
        recorded = self._recorded(model, resolved, model_dir)  # a refused line stops the build before any file
        resolved = self._categorized(model, resolved, model_dir, recorded)  # before golden requests are drawn
        # One build's files (golden, source, resolved signature, Bento export, record) land together: a failure
        # part-way keeps the previous build whole, never a new golden beside an old record.
        with atomic.staged_tree(self.state.build_dir(model.name), f"the build of {model.name}", atomic.IN_STATE,
                                prefix=f"{model.name}.building-") as stage:  # not hidden: BentoML builds there
            writes = self.state.staging(model.name, stage)
            cases = self._golden(model, resolved, model_dir, recorded, writes)
            source, decision = self._workspace(model, folder, resolved, bento_model_tag, model_dir, cases, recorded,
                                               writes)
            if decision.probes:  # `factory test` asks the served model them too
                golden.extend(writes.golden_path(model.name), cases, decision.probes,
                              min(8, model.batching.max_batch_size))
            self.progress(f"{model.name}: serves {decision.path}: {decision.reason}")
            bento_tag = self._bento_build(model, source, content_hash)
            self._export(model, bento_tag, writes)
            record = BuildRecord(
                model=model.name, content_hash=content_hash,
                registry={"name": resolved.registered_as, "version": resolved.version, "run_id": resolved.run_id,
                          "ref": model.registry_ref, "uri": self.registry.uri},
                bento_model_tag=bento_model_tag, bento_tag=bento_tag,
                bento_export=str(_export_path(self.state, model)),
                golden=str(self.state.golden_path(model.name)), serving_path=decision.path,
                serving_reason=decision.reason, **self.image_step.unbuilt(model, bento_tag, writes))
            record.save(writes.record_path(model.name))
        if self.image_step.skipped:
            return BuildOutcome(model.name, record, skipped=False, seconds=time.monotonic() - started)
        return self._with_image(model, record, started, skipped=False)

    def _with_image(self, model: ModelSpec, record: BuildRecord, started: float, skipped: bool) -> BuildOutcome:
        """Build and push the image; a failure is this model's alone (the Bento stays recorded)."""
        try:
            record = record.model_copy(update=self.image_step.build(model, record))
        except FactoryError as exc:
            return BuildOutcome(model.name, record, skipped, time.monotonic() - started, image_error=str(exc))
        record.save(self.state.record_path(model.name))
        return BuildOutcome(model.name, record, skipped, time.monotonic() - started)

    def _previous(self, model: ModelSpec) -> Optional[BuildRecord]:
        """An unreadable record from an interrupted build only means: build again (and overwrite it)."""
        try:
            return self.state.build_record(model.name)
        except StateError:
            return None

    def _rendered_folder(self, model: ModelSpec) -> dict[str, str]:
        """The model's service and bentofile, plus the runtime files every Bento shares."""
        folders = (f"models/{model.name}/", f"{RUNTIME_DIR}/")
        return {name.split("/")[-1]: text for name, text in self.rendered.items() if name.startswith(folders)}

    def _import(self, model: ModelSpec, resolved: ResolvedModel) -> str:
        import bentoml

        tag = f"{model.name.lower()}:r{resolved.version}-{resolved.fingerprint[:12]}"
        if bento_store.model_exists(tag):
            return tag
        try:
            bentoml.mlflow.import_model(
                tag, model_uri=resolved.model_uri, signatures={"predict": {"batchable": True, "batch_dim": 0}},
                labels={"model-factory/model": model.k8s_name},
                metadata={"registry_name": resolved.registered_as, "registry_version": resolved.version})
        except Exception as exc:  # BentoML and MLflow raise many types here; all mean the same to the user
            raise BuildError(f"{self.catalog.where(model.name)}: importing {resolved.model_uri} into the BentoML "
                             f"model store failed: {exc}") from exc
        return tag

    def _workspace(self, model: ModelSpec, folder: dict[str, str], resolved: ResolvedModel,
                   bento_model_tag: str, model_dir: Path, cases: list[dict],
                   recorded: list[Requirement], writes: StateDir) -> tuple[Path, compiled.Decision]:
        source = writes.source_dir(model.name)
        source.mkdir(parents=True)
        for name, text in folder.items():
            (source / name).write_text(text, encoding="utf-8")
        flavor, requirements, decision = self._dependencies(model, resolved, model_dir, cases, source, recorded)
        write_atomic(source / "requirements.txt", "".join(f"{line}\n" for line in requirements))
        ResolvedRecord(bento_model_tag=bento_model_tag, signature=resolved.signature, flavor=flavor,
                       registry={"name": resolved.registered_as, "version": resolved.version},
                       requirements=list(requirements)).save(writes.resolved_path(model.name))
        return source, decision

    def _dependencies(self, model: ModelSpec, resolved: ResolvedModel, model_dir: Path, cases: list[dict],
                      source: Path, recorded: list[Requirement]) -> tuple[dict, tuple, compiled.Decision]:
        """The loader the Bento will use (compiled where exact), and its packages: the compiled form's are the
        runtime's pins and onnxruntime; a native model's are its own requirements merged with the runtime's."""
        flavor = dict(resolved.flavor)
        packages = list(flavor.pop("packages"))
        native = bento_module("mf_flavors").native_model
        foreign = foreign_versions(recorded)
        runtimes_only = flavor.get("model_class") == ONNX_MODEL and graph_runtimes_only(recorded)
        if foreign and not runtimes_only:  # neither converted nor probed under the factory's versions (factory/model_env.py)
            decision = compiled.Decision("pyfunc" if flavor["loader"] == "pyfunc" else "native",
                                         f"logged with {', '.join(foreign)}: served in its own versions, not "
                                         "converted under the factory's", {})
            if flavor["loader"] != "pyfunc":
                packages.append("pandas")  # the pod picks frame or array when it loads the model
            return flavor, self._requirements(model, recorded, packages, flavor["loader"] != "pyfunc"), decision
        # A graph logged under another onnxruntime: its golden rows, answered in the model's own versions, are the
        # check; this process's answers come from the factory's onnxruntime, which the candidate runs on too.
        answer = None if foreign else golden.answerer(model_dir, resolved.signature["inputs"], flavor.get("feeds"))
        decision = compiled.decide(lambda: native(model_dir, flavor), flavor, resolved.signature, cases,
                                  model.compile, source / compiled.COMPILED_FILE, answer,
                                  probes.example_rows(model_dir, resolved.signature))
        if decision.compiled:
            requirements = resolve_requirements([], compiled.COMPILED_PACKAGES, model.serving.packages, True,
                                                self.catalog.where(model.name))
            return decision.flavor, requirements, decision
        if flavor["loader"] != "pyfunc":
            try:
                wants = bento_module("mf_flavors").load(model_dir, flavor).wants
            except Exception as exc:  # a library missing here or a format it cannot read: pyfunc always can
                self.progress(f"note: {model.name}: native {flavor['loader']} loading failed ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); serving it through mlflow.pyfunc")
                flavor, packages, wants = {**flavor, "loader": "pyfunc"}, list(PYFUNC_PACKAGES), "frame"
            if wants == "frame":
                packages.append("pandas")  # fit on a DataFrame: it selects columns by name
        if flavor["loader"] == "pyfunc":  # no native loader (a PythonModel) or it failed here: MLflow's serves
            decision = dataclasses.replace(decision, path="pyfunc")
        return flavor, self._requirements(model, recorded, packages, flavor["loader"] != "pyfunc"), decision

    def _categorized(self, model: ModelSpec, resolved: ResolvedModel, model_dir: Path,
                     recorded: list[Requirement]) -> ResolvedModel:
        """`resolved` with its categorical columns' categories in its signature (factory/categorical.py): golden
        and fuzz requests draw them, the served row model refuses other strings. A model in versions of its own is
        not loaded here (factory/model_env.py): its string columns stay free-form."""
        if foreign_versions(recorded):
            return resolved
        flavor = {key: value for key, value in resolved.flavor.items() if key != "packages"}
        answer = golden.answerer(model_dir, resolved.signature["inputs"], flavor.get("feeds"))
        found = categorical.find(lambda: bento_module("mf_flavors").native_model(model_dir, flavor), flavor,
                                 resolved.signature, answer, probes.example_rows(model_dir, resolved.signature))
        if not found:
            return resolved
        self.progress(f"{model.name}: {categorical.described(found)}")
        return dataclasses.replace(resolved, signature=categorical.annotated(resolved.signature, found))

    def _recorded(self, model: ModelSpec, resolved: ResolvedModel, model_dir: Path) -> list[Requirement]:
        """The model's own requirements, untrusted: only requirement lines pass (factory/model_env.py); first, a
        model whose pickled code the factory's Python cannot run is refused before anything loads it."""
        where = f"{self.catalog.where(model.name)}: {resolved.registered_as} version {resolved.version}"
        loadable_bytecode(model_dir, where)
        return recorded_requirements(model_dir, where)

    def _requirements(self, model: ModelSpec, recorded: list[Requirement], packages: list[str],
                      native: bool) -> tuple[str, ...]:
        return resolve_requirements(recorded, packages, model.serving.packages, native, self.catalog.where(model.name),
                                    gpu=model.resources.gpu > 0, torch_index=Settings.from_env().torch_cpu_index)

    def _bento_build(self, model: ModelSpec, source: Path, content_hash: str) -> str:
        # BentoML refuses build contexts outside its working directory and under hidden folders.
        command = bento_store.BENTOML + ["build", ".", "--version", content_hash[:16], "-o", "tag"]
        failure = f"{self.catalog.where(model.name)}: `bentoml build` failed"
        try:
            output = bento_store.run(command, failure, cwd=source)
        except BuildError as exc:
            # Same version = same content hash: a Bento an interrupted build left without a record.
            leftover = re.search(r"Item '([^']+)' already exists in the store", str(exc))
            if not leftover:
                raise
            self.progress(f"{model.name}: a Bento of this very content, {leftover[1]}, is already in the store, but "
                          f"{unrecorded(self.state, model.name)}; deleting it and building again")
            bento_store.run(bento_store.BENTOML + ["delete", "-y", leftover[1]],
                            f"`bentoml delete -y {leftover[1]}` failed (delete it yourself, with the same "
                            "BENTOML_HOME, and build again)")
            output = bento_store.run(command, failure, cwd=source)
        tags = [line.split("__tag__:", 1)[1].strip() for line in output.splitlines() if "__tag__:" in line]
        if not tags:
            raise BuildError(f"{self.catalog.where(model.name)}: `bentoml build` printed no tag:\n{output[-1000:]}")
        return tags[-1]

    def _export(self, model: ModelSpec, bento_tag: str, writes: StateDir) -> None:
        # CI jobs pass Bentos as artifacts; BentoML needs an absolute output path (FIELD_NOTES).
        bento_store.run(bento_store.BENTOML + ["export", bento_tag, str(_export_path(writes, model))],
                        f"{self.catalog.where(model.name)}: `bentoml export` failed")

    def _golden(self, model: ModelSpec, resolved: ResolvedModel, model_dir: Path,
                recorded: list[Requirement], writes: StateDir) -> list[dict]:
        path = writes.golden_path(model.name)

        foreign = foreign_versions(recorded)

        def model_venv() -> Path:
            # The set the Bento serves a pyfunc model with, so `factory test` finds this venv already made.
            why = f"it was logged with {', '.join(foreign)}" if foreign else "the factory cannot load this model itself"
            self.progress(f"{model.name}: {why}; recording its golden predictions in a venv with its own requirements")
            return runtime_python(self.state.root, self._requirements(model, recorded, list(PYFUNC_PACKAGES), False))

        recorded_golden = golden.record_golden(resolved, model_dir, min(8, model.batching.max_batch_size),
                                               model_venv, self.catalog.where(model.name), here=not foreign)
        cases, errors, non_finite = recorded_golden.cases, recorded_golden.errors, recorded_golden.non_finite
        if non_finite and not model.serving.allow_non_finite:
            self.progress(f"warning: {model.name}: the registry's own model answered NaN or infinity for "
                          f"{len(non_finite)} sampled rows, e.g. {json.dumps(non_finite[0])[:300]}; `factory test` "
                          "will fail it (set serving.allow_non_finite: true in models.yaml to serve them as null)")
        if recorded_golden.miscounted:
            self.progress(f"warning: {model.name}: the registry's own model answered another number of outputs than "
                          f"rows ({next(e for e in errors if 'outputs for' in e)}), as `mlflow models serve` would; an "
                          "sklearn text pipeline logged with a string-column signature gets MLflow's DataFrame and "
                          "vectorizes its column names, not its rows: log it as an mlflow.pyfunc.PythonModel whose "
                          "predict hands the pipeline that column (model_input[\"text\"]), and register a new version")
        elif recorded_golden.one_row_only:
            self.progress(f"warning: {model.name}: the registry's own model answers one row per call: it raised on "
                          "every sampled request of several rows, whose rows it answers one by one; set "
                          "`batching: {enabled: false, max_batch_size: 1}` in models.yaml, or requests merged into "
                          f"one run fail together ({len(errors)} of {len(errors) + len(cases)} sampled requests "
                          f"raised, e.g. {errors[0]})")
        elif errors:
            self.progress(f"warning: {model.name}: the registry's own model raised on {len(errors)} of "
                          f"{len(errors) + len(cases)} sampled requests ({errors[0]}); `factory test` will "
                          "find the smallest such input")
        golden.write(path, cases)
        return cases


def _export_path(state: StateDir, model: ModelSpec) -> Path:
    return (state.build_dir(model.name) / f"{model.k8s_name}.bento").resolve()


def unrecorded(state: StateDir, model: str) -> str:
    """Why no build record names a Bento of this content that the store holds, as far as the record shows."""
    path = state.record_path(model)
    if not path.is_file():
        return (f"no build record names it ({path} is missing: deleted, or the build that made the Bento "
                "stopped before writing it)")
    try:
        named = state.build_record(model).bento_tag
    except StateError:
        return f"its build record {path} is unreadable (a build stopped while writing it?)"
    return f"its build record {path} names {named}, built since from other content (a change undone?)"


def _content_hash(folder: dict[str, str], resolved: ResolvedModel, serving: str) -> str:
    digest = hashlib.sha256((factory_digest(FACTORY_PACKAGE) + resolved.fingerprint + serving).encode())
    for name in sorted(folder):
        digest.update(name.encode() + b"\0" + folder[name].encode() + b"\0")
    return digest.hexdigest()


@functools.cache
def factory_digest(package: Path) -> str:
    """This factory's own code and pinned packages. What a model is built with (its compiled form, golden
    predictions, Dockerfile, base image recipe) comes from them as much as from its rendered folder: a new
    factory builds every model again, as factory/changes.py counts a different factory as changing them all."""
    digest = hashlib.sha256()
    for path in [*sorted(package.glob("*.py")), package.parent / "requirements.lock"]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
