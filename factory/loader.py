"""Read models.yaml into a `Catalog`, or raise one CatalogError listing every problem with file:line:col."""

from __future__ import annotations

import codecs
import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ValidationError

from factory.catalog import (REGISTRY_NAME_HINT, VERSION_OR_ALIAS, VERSION_OR_ALIAS_MESSAGE, Batching, Catalog, Compile,
                             ExperimentSpec, KubernetesSettings, ModelSpec, PipelineSettings, Resources, Scaling, Serving,
                             Slo, shown)
from factory.crosscheck import cross_check
from factory.errors import CatalogError, Problem, UsageError
from factory.expand import DEFAULT_KEYS, Expansion, Origin, expand_models, raw_value, source_of, suggest
from factory.yamlsource import SourceMap, YamlPath, load_located
from proxy.yamldoc import read_regular_file

TOP_KEYS = ("kubernetes", "pipeline", "defaults", "models", "experiments")
QUOTE_HINT = "YAML reads unquoted yes/no/on/off as booleans and 1.10 as a number: quote the value, e.g. 'NO'"
DEFAULT_SECTIONS: dict[str, type[BaseModel]] = {"batching": Batching, "resources": Resources,
                                                "scaling": Scaling, "serving": Serving, "compile": Compile,
                                                "slo": Slo}


def load_catalog(path: Path) -> Catalog:
    # A symlinked catalog is named with its target, so every line says which file was really read.
    display = f"{path} -> {_target(path)}" if path.is_symlink() else str(path)
    try:
        text = read_regular_file(path)
    except FileNotFoundError as exc:
        raise CatalogError([Problem(display, 0, 0, "", "file not found",
                                    "run from the repository root or pass -f PATH/TO/models.yaml")]) from exc
    except UnicodeDecodeError as exc:
        raise CatalogError([_not_utf8(display, exc)]) from exc
    except OSError as exc:
        raise CatalogError([Problem(display, 0, 0, "", f"cannot read: {exc.strerror}",
                                    "pass -f the path of the catalog file itself")]) from exc
    return parse_catalog(text, display)


def _not_utf8(display: str, exc: UnicodeDecodeError) -> Problem:
    data, start = exc.object, exc.start
    line_start = data.rfind(b"\n", 0, start) + 1
    column = len(data[line_start:start].decode("utf-8", errors="replace")) + 1
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    return Problem(display, data.count(b"\n", 0, start) + 1, column, "",
                   f"not UTF-8 text: byte 0x{data[start]:02x}" + (" (the file is UTF-16)" if utf16 else ""),
                   "save the file as UTF-8")


def select_models(catalog: Catalog, names: Iterable[str], everything: bool) -> list[ModelSpec]:
    """The models a build/test/manifests command line names (or all of them with --all)."""
    names = list(names)
    if everything == bool(names):
        raise UsageError("name the models to work on, or pass --all (not both)")
    if everything:
        return list(catalog.models)
    known = {model.name: model for model in catalog.models}
    unknown = [name for name in names if name not in known]
    if unknown:
        # Echoed escaped: a name from the command line may hold a line break or a terminal escape sequence.
        raise UsageError(f"not in models.yaml: {', '.join(map(shown, unknown))}; run `factory routes` to list the "
                         "models")
    return [known[name] for name in names]


def parse_catalog(text: str, file: str = "models.yaml") -> Catalog:
    data, source, problems, fatal = load_located(text, file)
    if isinstance(data, list):  # the seed format: a bare list of models
        data, source = {"models": data}, source.prefixed(("models",))
        problems = [_prefixed(problem) for problem in problems]
    if fatal:
        raise CatalogError(problems)
    validator = _Validator(source)
    validator.problems.extend(problems)
    return validator.catalog(data)


def _target(link: Path) -> str:
    try:
        return str(link.resolve())
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError on a symlink loop
        return "(a symlink loop)"


KINDS = {bool: "a boolean", int: "a number", float: "a number"}


def _kind(data: Any) -> str:
    if data is None:
        return "an empty document"
    if isinstance(data, str):
        return f"a plain string of {len(data)} characters"
    return KINDS.get(type(data), f"a {type(data).__name__}")


def _prefixed(problem: Problem) -> Problem:
    return dataclasses.replace(problem, path="models" + problem.path if problem.path.startswith("[") else problem.path)


class _Validator:
    def __init__(self, source: SourceMap):
        self.source = source
        self.problems: list[Problem] = []

    def catalog(self, data: Any) -> Catalog:
        if not isinstance(data, dict):
            # The kind only, never the text: a mistyped -f or symlink may point at a file that is not ours.
            self._fail((), f"must be a list of models or a mapping with {', '.join(TOP_KEYS)} "
                           f"(got {_kind(data)})", "is this the right file? `factory validate -f PATH/TO/models.yaml`")
        for key in data:
            if key not in TOP_KEYS:
                self.problems.append(self.source.problem((key,), "unknown top-level key",
                                                         suggest(key, list(TOP_KEYS)) or
                                                         f"allowed: {', '.join(TOP_KEYS)}", prefer_key=True))
        kubernetes = self._section(data, "kubernetes", KubernetesSettings)
        pipeline = self._section(data, "pipeline", PipelineSettings)
        defaults = self._defaults(data.get("defaults", {}))
        entries = data.get("models")
        if not isinstance(entries, list) or not entries:
            self._fail(("models",), f"must be a non-empty list of models (got {shown(entries)})",
                       "see README: models.yaml reference")
        expansion = expand_models(entries, defaults, self.source)
        self.problems.extend(expansion.problems)
        validated = self._models(expansion, defaults)
        experiments = self._experiments(data.get("experiments", []))
        # Every independent problem in one pass: cross-entry checks run over the entries that did
        # validate, against every name written, so no finding waits for another one to be fixed.
        declared = {merged["name"] for merged, _ in expansion.models if isinstance(merged.get("name"), str)}
        self.problems.extend(cross_check([m for m, _ in validated], [o for _, o in validated], experiments,
                                         self.source, declared))
        if self.problems:
            raise CatalogError(self.problems)
        models = [model for model, _ in validated]
        origins = {model.name: f"{self.source.file}:{self.source.locate(origin.path)[0]}"
                   for model, origin in validated}
        return Catalog(kubernetes=kubernetes or KubernetesSettings(), pipeline=pipeline or PipelineSettings(),
                       models=tuple(models),
                       experiments=tuple(experiments), origins=origins)

    def _fail(self, path: YamlPath, message: str, hint: Optional[str] = None) -> None:
        self.problems.append(self.source.problem(path, message, hint))
        raise CatalogError(self.problems)

    def _section(self, data: dict, key: str, model: type[BaseModel]) -> Optional[BaseModel]:
        if key not in data:
            return None
        return self._validate(model, data[key], (key,))

    def _defaults(self, defaults: Any) -> dict:
        if not isinstance(defaults, dict):
            self._fail(("defaults",), f"must be a mapping (got {shown(defaults)})")
        for key, value in defaults.items():
            if key in DEFAULT_SECTIONS:
                self._validate(DEFAULT_SECTIONS[key], value, ("defaults", key))
            elif key not in DEFAULT_KEYS:
                self.problems.append(self.source.problem(
                    ("defaults", key), "unknown key", suggest(key, list(DEFAULT_KEYS)) or
                    f"defaults may set: {', '.join(DEFAULT_KEYS)}", prefer_key=True))
        return defaults

    def _models(self, expansion: Expansion, defaults: dict) -> list[tuple[ModelSpec, Origin]]:
        models = []
        for merged, origin in expansion.models:
            try:
                models.append((ModelSpec.model_validate(merged), origin))
            except ValidationError as exc:
                errors = exc.errors()
                # pydantic runs the version/alias rule only once every field is valid: check it anyway.
                if (merged.get("version") is None) == (merged.get("alias") is None):
                    errors.append({"type": VERSION_OR_ALIAS, "loc": (), "msg": VERSION_OR_ALIAS_MESSAGE,
                                   "input": merged})
                for error in errors:
                    self.problems.append(self._model_problem(error, origin, defaults))
        return models

    def _model_problem(self, error: dict, origin: Origin, defaults: dict) -> Problem:
        loc = tuple(error["loc"])
        where = source_of(origin, loc, defaults)
        message, hint, at_key = describe(error, ModelSpec)
        written = raw_value(origin.raw, loc)
        if origin.combination and isinstance(written, str) and "{" in written:
            message += f" (matrix: {origin.describe()})"
        return self.source.problem(where, message, hint, prefer_key=at_key)

    def _experiments(self, entries: Any) -> list[ExperimentSpec]:
        if not isinstance(entries, list):
            self._fail(("experiments",), f"must be a list of experiments (got {shown(entries)})")
        validated = [self._validate(ExperimentSpec, entry, ("experiments", index))
                     for index, entry in enumerate(entries)]
        return [experiment for experiment in validated if experiment is not None]

    def _validate(self, model: type[BaseModel], value: Any, path: YamlPath) -> Optional[Any]:
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            for error in exc.errors():
                loc = tuple(error["loc"])
                message, hint, at_key = describe(error, model)
                self.problems.append(self.source.problem(path + loc, message, hint, prefer_key=at_key))
            return None

def describe(error: dict, model: type[BaseModel]) -> tuple[str, Optional[str], bool]:
    """Our wording for a pydantic error: (message, hint, whether to point at the key rather than the value)."""
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    loc = tuple(error["loc"])
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        return "unknown key", suggest(str(loc[-1]), allowed) or f"allowed keys: {', '.join(allowed)}", True
    if kind == "missing":
        return "required key is missing", f"add `{loc[-1]}:`", True
    simple = {
        "greater_than_equal": lambda: f"must be ≥ {ctx.get('ge')} (got {shown(value)})",
        "less_than_equal": lambda: f"must be ≤ {ctx.get('le')} (got {shown(value)})",
        "int_type": lambda: f"must be a whole number (got {shown(value)})",
        "bool_type": lambda: f"must be true or false (got {shown(value)})",
        "float_type": lambda: f"must be a number (got {shown(value)})",
        "float_parsing": lambda: f"must be a number (got {shown(value)})",
        "string_type": lambda: f"must be a string (got {shown(value)})",
        "list_type": lambda: f"must be a list (got {shown(value)})",
        "model_type": lambda: f"must be a mapping (got {shown(value)})",
        "dict_type": lambda: f"must be a mapping (got {shown(value)})",
        "too_short": lambda: f"must have at least {ctx.get('min_length')} item(s) (got {ctx.get('actual_length')})",
        "too_long": lambda: f"must have at most {ctx.get('max_length')} items (got {ctx.get('actual_length')})",
    }
    if kind in simple:
        return simple[kind](), None, False
    message = error["msg"].removeprefix("Value error, ")
    if kind == "registry_name":
        return message, REGISTRY_NAME_HINT, False
    if isinstance(value, (bool, float)) and kind not in ("greater_than_equal", "less_than_equal"):
        return message, QUOTE_HINT, False
    return message, None, False


def _fields_at(model: type[BaseModel], loc: YamlPath) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        inner = _inner_model(arg)
        if inner is not None:
            return inner
    return None

