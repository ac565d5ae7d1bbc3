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
import pickletools
import sys
from pathlib import Path
from typing import Iterator

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from factory.errors import BuildError
from factory.modelreqs import model_requirements

# The factory reads MLmodel files of any MLflow; which MLflow logged a model never changes its answers.
NOT_COMPARED = frozenset({"mlflow", "mlflow-skinny"})
# What an mlflow.onnx model needs to answer: its graph, then the runtime. Logged in other versions of these alone,
# its graph may still serve compiled, on the factory's onnxruntime (factory/build.py).
GRAPH_RUNTIMES = frozenset({"onnx", "onnxruntime", "onnxruntime-gpu"})


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
    return [f"{requirement} (the factory has {installed})" for requirement, installed in _foreign(recorded)]


def graph_runtimes_only(recorded: list[Requirement]) -> bool:
    """Whether every requirement the factory does not satisfy is onnx's or onnxruntime's (GRAPH_RUNTIMES)."""
    return all(canonicalize_name(requirement.name) in GRAPH_RUNTIMES for requirement, _ in _foreign(recorded))


def _foreign(recorded: list[Requirement]) -> Iterator[tuple[Requirement, str]]:
    for requirement in recorded:
        name = canonicalize_name(requirement.name)
        if name in NOT_COMPARED or (requirement.marker is not None and not requirement.marker.evaluate()):
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            yield requirement, installed


def loadable_bytecode(model_dir: Path, where: str) -> None:
    """A BuildError unless the factory's Python can run the code the model's pickles carry. cloudpickle saves a
    class or function defined in a notebook or `__main__` by value, as bytecode of the Python that logged it; a
    PythonModel logged from Python 3.12 and loaded by 3.11 crashed the factory's process (a segfault, no message).
    Found by reading the pickles' opcodes (pickletools: nothing is loaded); other pickles load across versions."""
    flavors = read_mlmodel(model_dir, where).get("flavors") or {}
    logged = str((flavors.get("python_function") or {}).get("python_version") or "")
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not logged or logged.split(".")[:2] == ours.split("."):
        return
    for name in _pickles(model_dir, flavors):
        if _carries_code(model_dir / name):
            raise BuildError(f"{where}: {name} holds Python code pickled by value under Python {logged} (a class or "
                             "function defined in a notebook or __main__, which cloudpickle saves as bytecode), and "
                             f"the factory serves Python {ours}, which cannot run that bytecode; log the model from "
                             f"Python {ours}, or as a model from code (python_model=\"model.py\") or with its "
                             "classes in an importable module (code_paths), and register a new version")


def _pickles(model_dir: Path, flavors: dict) -> list[str]:
    names = {value for conf in flavors.values() if isinstance(conf, dict)
             for key, value in conf.items() if key in _PICKLE_KEYS and isinstance(value, str)}
    return sorted(name for name in names if name.endswith((".pkl", ".pickle")) and (model_dir / name).is_file())


# Where MLflow's flavors name their pickle: a PythonModel, sklearn's model, LightGBM/XGBoost's sklearn models.
_PICKLE_KEYS = ("python_model", "pickled_model", "data", "model_path")


def _carries_code(pickle: Path) -> bool:
    """cloudpickle rebuilds a code object through `_builtin_type("CodeType")`."""
    try:
        return any(arg == "CodeType" for opcode, arg, _ in pickletools.genops(pickle.read_bytes())
                   if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"))
    except (OSError, ValueError):  # not a pickle after all: its flavor's loader will say so
        return False


def read_mlmodel(model_dir: Path, where: str) -> dict:
    """The model's MLmodel file as a dict; `where` names the models.yaml entry in a BuildError."""
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BuildError(f"{where}: its MLmodel file cannot be read ({exc}); register the model again") from exc
    return mlmodel if isinstance(mlmodel, dict) else {}


def _conda_file(model_dir: Path, where: str) -> Path | None:
    mlmodel = read_mlmodel(model_dir, where)
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
