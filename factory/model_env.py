"""A registry model's own environment: the requirements it was logged with, and which of them the factory lacks.

MLflow writes them to requirements.txt; a model logged before MLflow 1.20 (or copied without that file) has
only conda.yaml, whose `pip:` section is then what MLflow itself installs (`mlflow.pyfunc.get_model_dependencies`
falls back to it, ignoring conda packages). Either way the lines are untrusted (factory/modelreqs.py).

A model pickled under other library versions than the factory's own (scikit-learn 1.3 under 1.9, numpy 1 under
2) must not be answered, or converted, by the factory's process: unpickling across versions may fail or quietly
answer differently (scikit-learn's InconsistentVersionWarning). Its golden predictions come from a venv with its
own versions, as `mlflow models serve` would install them, and it serves natively in those versions.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from factory.errors import BuildError
from factory.modelreqs import model_requirements

# The factory reads MLmodel files of any MLflow; which MLflow logged a model never changes its answers.
NOT_COMPARED = frozenset({"mlflow", "mlflow-skinny"})


def recorded_requirements(model_dir: Path, where: str) -> list[Requirement]:
    """requirements.txt's lines, else conda.yaml's pip section (MLflow's own fallback), else none."""
    requirements = model_dir / "requirements.txt"
    if requirements.is_file():
        return model_requirements(requirements.read_text(encoding="utf-8"), f"{where}: requirements.txt")
    conda = _conda_file(model_dir, where)
    if conda is None:
        return []
    # No requirements.txt: conda.yaml's pip entries, numbered as they come.
    source = f"{where}: {conda.name} pip entry"
    return model_requirements("\n".join(_pip_section(conda, source)), source)


def foreign_versions(recorded: list[Requirement]) -> list[str]:
    """The model's requirements the factory's own process does not satisfy, each as `pin (the factory has X)`;
    a package the factory lacks altogether is no mismatch here (loading it fails loudly instead)."""
    found = []
    for requirement in recorded:
        name = canonicalize_name(requirement.name)
        if name in NOT_COMPARED or (requirement.marker is not None and not requirement.marker.evaluate()):
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            found.append(f"{requirement} (the factory has {installed})")
    return found


def _conda_file(model_dir: Path, where: str) -> Path | None:
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BuildError(f"{where}: its MLmodel file cannot be read ({exc}); register the model again") from exc
    env = ((mlmodel.get("flavors") or {}).get("python_function") or {}).get("env")
    name = env.get("conda") if isinstance(env, dict) else env  # MLflow < 2.0 wrote the file name alone
    if not isinstance(name, str) or not (model_dir / name).is_file():
        return None
    return model_dir / name


def _pip_section(conda: Path, source: str) -> list[str]:
    try:
        spec = yaml.safe_load(conda.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BuildError(f"{source}: not valid YAML ({exc}); re-log the model with pip_requirements") from exc
    dependencies = spec.get("dependencies") if isinstance(spec, dict) else None
    for dependency in dependencies if isinstance(dependencies, list) else []:
        if isinstance(dependency, dict) and "pip" in dependency:
            entries = dependency["pip"] or []
            if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
                raise BuildError(f"{source}: the pip section is not a list of requirement strings; re-log the "
                                 "model with pip_requirements")
            return entries
    return []
