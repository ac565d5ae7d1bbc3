"""Turn raw models.yaml entries into one plain mapping per model: defaults applied, matrices expanded.

Each expanded model remembers where it came from (`Origin`), so a problem found later in an
expanded model is reported at the line the user actually wrote: in the entry, or in `defaults:`.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from factory.catalog import shown
from factory.errors import Problem
from factory.yamlsource import SourceMap, YamlPath

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
MERGED_SECTIONS = ("batching", "resources", "scaling", "serving", "compile", "slo")
DEFAULT_KEYS = MERGED_SECTIONS + ("version", "alias")
MAX_MATRIX_SIZE = 10_000
MAX_MODELS = 50_000


@dataclass(frozen=True)
class Origin:
    """Where an expanded model was written: `models[index]`, and its matrix combination if any."""

    index: int
    raw: dict
    combination: tuple[tuple[str, Any], ...] = ()

    @property
    def path(self) -> YamlPath:
        return ("models", self.index)

    def describe(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.combination)


@dataclass
class Expansion:
    models: list[tuple[dict, Origin]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def suggest(word: str, choices: list[str]) -> Optional[str]:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def source_of(origin: Origin, path: YamlPath, defaults: dict) -> YamlPath:
    """The file path a value at `path` (inside an expanded model) was written at."""
    if _has_path(origin.raw, path) or not path:
        return origin.path + path
    if path[0] in DEFAULT_KEYS and _has_path(defaults, path[:1]) and not _has_path(origin.raw, path[:1]):
        return ("defaults",) + path
    if path[0] in MERGED_SECTIONS and _has_path(defaults, path):
        return ("defaults",) + path
    return origin.path + path


_MISSING = object()


def _lookup(mapping: Any, path: YamlPath) -> Any:
    for part in path:
        if isinstance(mapping, dict) and part in mapping:
            mapping = mapping[part]
        elif isinstance(mapping, list) and isinstance(part, int) and 0 <= part < len(mapping):
            mapping = mapping[part]
        else:
            return _MISSING
    return mapping


def raw_value(mapping: Any, path: YamlPath) -> Any:
    value = _lookup(mapping, path)
    return None if value is _MISSING else value


def _has_path(mapping: Any, path: YamlPath) -> bool:
    return _lookup(mapping, path) is not _MISSING


def apply_defaults(entry: dict, defaults: dict) -> dict:
    merged = dict(entry)
    for section in MERGED_SECTIONS:
        base, own = defaults.get(section), entry.get(section)
        if isinstance(base, dict) and isinstance(own, dict):
            merged[section] = {**base, **own}
        elif section not in entry and section in defaults:
            merged[section] = base
    # version and alias are one choice: a model that names either ignores both defaults.
    if "version" not in entry and "alias" not in entry:
        for key in ("version", "alias"):
            if key in defaults:
                merged[key] = defaults[key]
    return merged


class _Expander:
    def __init__(self, source: SourceMap, defaults: dict):
        self.source = source
        self.defaults = defaults
        self.result = Expansion()

    def entry(self, index: int, entry: Any) -> None:
        path: YamlPath = ("models", index)
        if not isinstance(entry, dict):
            self._problem(path, f"each model must be a mapping with name, endpoint, ... (got {shown(entry)})")
            return
        if "matrix" not in entry:
            self._add(apply_defaults(entry, self.defaults), Origin(index, entry))
            return
        matrix = self._matrix(path, entry["matrix"], entry.get("name"))
        if matrix is None:
            return
        template = {key: value for key, value in entry.items() if key != "matrix"}
        names = list(matrix)
        for values in itertools.product(*(matrix[name] for name in names)):
            combination = tuple(zip(names, values))
            expanded = self._substitute(template, dict(combination), path)
            if expanded is _FAILED:
                return
            self._add(apply_defaults(expanded, self.defaults), Origin(index, template, combination))

    def _add(self, model: dict, origin: Origin) -> None:
        if len(self.result.models) >= MAX_MODELS:
            self._problem(origin.path, f"the catalog expands to more than {MAX_MODELS:,} models",
                          "split it into several models.yaml files")
            raise _Stop()
        self.result.models.append((model, origin))

    def _matrix(self, path: YamlPath, matrix: Any, name: Any) -> Optional[dict[str, list]]:
        mpath = path + ("matrix",)
        if not isinstance(matrix, dict) or not matrix:
            self._problem(mpath, f"must map variable names to lists of values (got {shown(matrix)})",
                          "e.g. matrix: {city: [2, 3], segment: [TAXI, PHV]}")
            return None
        size, ok = 1, True
        for variable, values in matrix.items():
            vpath = mpath + (variable,)
            if not VARIABLE.fullmatch(variable):
                ok = self._problem(vpath, f"matrix variable {shown(variable)} must be a letter or '_' followed "
                                          "by letters, digits or '_'")
            elif not isinstance(values, list) or not values:
                ok = self._problem(vpath, f"must be a non-empty list of values (got {shown(values)})")
            elif any(isinstance(v, bool) or not isinstance(v, (str, int)) for v in values):
                bad = next(v for v in values if isinstance(v, bool) or not isinstance(v, (str, int)))
                ok = self._problem(vpath, f"values must be strings or whole numbers (got {shown(bad)})",
                                   "quote values YAML reads as booleans or floats, e.g. 'NO' or '1.10'")
            elif len(set(map(str, values))) != len(values):
                ok = self._problem(vpath, "lists the same value twice")
            elif not isinstance(name, str) or "{" + variable + "}" not in name:
                ok = self._problem(path + ("name",), f"must use matrix variable {{{variable}}} so every "
                                                     "expanded model gets its own name")
            else:
                size *= len(values)
        if ok and size > MAX_MATRIX_SIZE:
            ok = self._problem(mpath, f"expands to {size:,} models; at most {MAX_MATRIX_SIZE:,} per entry",
                               "split the entry")
        return matrix if ok else None

    def _substitute(self, value: Any, variables: dict[str, Any], path: YamlPath) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                out[key] = self._substitute(item, variables, path + (key,))
                if out[key] is _FAILED:
                    return _FAILED
            return out
        if isinstance(value, list):
            items = [self._substitute(item, variables, path + (i,)) for i, item in enumerate(value)]
            return _FAILED if _FAILED in items else items
        if not isinstance(value, str) or "{" not in value:
            return value
        unknown = [name for name in PLACEHOLDER.findall(value) if name not in variables]
        if unknown:
            self._problem(path, f"uses {{{unknown[0]}}}, which is not a matrix variable",
                          suggest(unknown[0], list(variables)) or f"variables: {', '.join(variables)}")
            return _FAILED
        return PLACEHOLDER.sub(lambda match: str(variables[match.group(1)]), value)

    def _problem(self, path: YamlPath, message: str, hint: Optional[str] = None) -> bool:
        self.result.problems.append(self.source.problem(path, message, hint))
        return False


class _Stop(Exception):
    pass


_FAILED = object()


def expand_models(entries: list, defaults: dict, source: SourceMap) -> Expansion:
    expander = _Expander(source, defaults)
    try:
        for index, entry in enumerate(entries):
            expander.entry(index, entry)
    except _Stop:
        pass
    return expander.result
