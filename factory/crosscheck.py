"""Checks that span entries: unique names and routes, experiments that name real models."""

from __future__ import annotations

from typing import Optional

from factory.catalog import ExperimentSpec, ModelSpec
from factory.errors import Problem
from factory.expand import Origin, suggest
from factory.yamlsource import SourceMap, YamlPath, format_path
from proxy.routing import CONTROL_PATHS, MAX_ROUTE_LENGTH


# The proxy's manifests live in k8s/proxy/ and are named model-factory-proxy.
RESERVED_NAMES = {"proxy", "model-factory-proxy"}


class _Checker:
    def __init__(self, source: SourceMap):
        self.source = source
        self.problems: list[Problem] = []

    def add(self, path: YamlPath, message: str, hint: Optional[str] = None) -> None:
        self.problems.append(self.source.problem(path, message, hint))

    def first_seen(self, path: YamlPath) -> str:
        line, _ = self.source.locate(path)
        return f"{format_path(path)}, line {line}"


def cross_check(models: list[ModelSpec], origins: list[Origin], experiments: list[ExperimentSpec],
                source: SourceMap, declared_names: set[str]) -> list[Problem]:
    """`models` are the entries that validated; experiments may name any entry written (`declared_names`)."""
    checker = _Checker(source)
    _unique_names(checker, models, origins)
    _unique_routes(checker, models, origins, experiments)
    _experiments_resolve(checker, declared_names, experiments)
    return checker.problems


def _where(origin: Origin) -> str:
    return f" (matrix: {origin.describe()})" if origin.combination else ""


def _unique_names(checker: _Checker, models: list[ModelSpec], origins: list[Origin]) -> None:
    # Kubernetes names and BentoML tags are lowercase with '-', so 'A_b' and 'a_B' would collide there.
    seen: dict[str, tuple[str, YamlPath]] = {}
    for model, origin in zip(models, origins):
        key = model.k8s_name
        path = origin.path + ("name",)
        if key in RESERVED_NAMES:
            checker.add(path, f"model name '{model.name}' is reserved for the proxy's own objects",
                        "choose another name")
            continue
        if key not in seen:
            seen[key] = (model.name, path)
            continue
        first_name, first_path = seen[key]
        if first_name == model.name:
            checker.add(path, f"duplicate model name '{model.name}'{_where(origin)}; first at "
                              f"{checker.first_seen(first_path)}", "give every model its own name")
        else:
            checker.add(path, f"model name '{model.name}' collides with '{first_name}' at "
                              f"{checker.first_seen(first_path)}: service names are lowercase",
                        "make the names differ by more than letter case")


def _unique_routes(checker: _Checker, models: list[ModelSpec], origins: list[Origin],
                   experiments: list[ExperimentSpec]) -> None:
    owners: dict[str, YamlPath] = {}
    claims = [(m.route, o.path + ("endpoint",), _where(o)) for m, o in zip(models, origins)]
    claims += [(e.route, ("experiments", i, "endpoint"), "") for i, e in enumerate(experiments)]
    for route, path, where in claims:
        if len(route) > MAX_ROUTE_LENGTH:
            checker.add(path, f"route {route[:40]}... is {len(route)} characters long{where}; the proxy takes at most "
                              f"{MAX_ROUTE_LENGTH}", "use fewer or shorter parameters")
        elif route in CONTROL_PATHS:
            checker.add(path, f"route {route} is the proxy's own endpoint{where} (it answers "
                              f"{', '.join(sorted(CONTROL_PATHS))} itself)", "change endpoint or add parameters")
        elif route in owners:
            checker.add(path, f"route {route} is already served by {checker.first_seen(owners[route])}{where}",
                        "change endpoint or parameters so every route is unique")
        else:
            owners[route] = path


def _experiments_resolve(checker: _Checker, names: set[str], experiments: list[ExperimentSpec]) -> None:
    known = sorted(names)
    seen_experiments: dict[str, YamlPath] = {}
    for index, experiment in enumerate(experiments):
        base: YamlPath = ("experiments", index)
        if experiment.name in seen_experiments:
            checker.add(base + ("name",), f"duplicate experiment name '{experiment.name}'; first at "
                                          f"{checker.first_seen(seen_experiments[experiment.name])}")
        seen_experiments.setdefault(experiment.name, base + ("name",))
        _variants_resolve(checker, base, experiment, names, known)
        _shadows_resolve(checker, base, experiment, names, known)


def _variants_resolve(checker: _Checker, base: YamlPath, experiment: ExperimentSpec, names: set[str],
                      known: list[str]) -> None:
    used: set[str] = set()
    for position, variant in enumerate(experiment.variants):
        path = base + ("variants", position, "model")
        if variant.model not in names:
            checker.add(path, f"unknown model '{variant.model}'",
                        suggest(variant.model, known) or "name a model listed under models:")
        elif variant.model in used:
            checker.add(path, f"model '{variant.model}' is listed twice in this experiment")
        used.add(variant.model)
    total = sum(variant.weight for variant in experiment.variants)
    if total != 100:
        checker.add(base + ("variants",), f"weights sum to {total}; they must sum to 100",
                    "adjust the weights, e.g. 50/50 or 90/10")


def _shadows_resolve(checker: _Checker, base: YamlPath, experiment: ExperimentSpec, names: set[str],
                     known: list[str]) -> None:
    variants = {variant.model for variant in experiment.variants}
    for position, shadow in enumerate(experiment.shadows):
        path = base + ("shadows", position)
        if shadow not in names:
            checker.add(path, f"unknown model '{shadow}'", suggest(shadow, known) or "name a model listed under models:")
        elif shadow in variants:
            checker.add(path, f"model '{shadow}' is already a variant of this experiment",
                        "a shadow gets copies of traffic; remove it from variants or from shadows")
