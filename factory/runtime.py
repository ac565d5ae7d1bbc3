"""The serving runtime: the packages a Bento installs, and a local venv with exactly those.

A Bento's packages are the model's own recorded requirements (its MLflow requirements.txt) merged
with the runtime's pins from requirements.lock and the catalog's `serving.packages`. Memory measured
on the factory's own venv would be wrong (it holds mlflow and pandas; sklearn imports pandas whenever
it is installed, +70 MiB), so models are tested in a venv built from the same requirement set as the
Bento's image: one venv per distinct set, cached by its hash.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from packaging.requirements import Requirement
from packaging.specifiers import Specifier
from packaging.utils import canonicalize_name
from packaging.version import Version
from uv import find_uv_bin

from factory import pipindex
from factory.errors import BuildError, ServeError
from factory.settings import Settings, child_environment
from factory.state import StateDir

ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = ROOT / "requirements.lock"
BENTO_TEMPLATES = ROOT / "templates" / "bento"
# What every Bento's service imports, whatever the model. uvicorn picks httptools and uvloop when installed:
# its pure-Python h11 parser and asyncio's loop cost ~40 % of a one-row request's CPU (bench/flavors.py).
# orjson encodes the outputs (templates/bento/mf_fast.py): 3 µs per 32-row answer where json.dumps took 21. msgspec
# decodes the rows of a tabular signature (templates/bento/mf_decode.py) in about half pydantic's time.
BASE_PACKAGES = ("bentoml", "httptools", "msgspec", "numpy", "orjson", "pydantic", "uvicorn", "uvloop")
# A natively loaded model needs its library, not mlflow (FIELD_NOTES: mlflow costs ~110 MiB per process).
NOT_NEEDED_NATIVE = frozenset({"mlflow", "mlflow-skinny"})
# The served API's own framework (the Bento's code runs on these versions): always the lock's.
SERVICE_PACKAGES = frozenset({"bentoml", "httptools", "msgspec", "orjson", "pydantic", "uvicorn", "uvloop"})
# The same import package without its CUDA code, published alongside each release since the version given:
# xgboost's Linux wheel pulls nvidia-nccl-cu12 (~300 MB); tensorflow's x86_64 wheel is 546 MB against
# tensorflow-cpu's 261 MB (2.21.0). Models with a GPU keep the CUDA build.
CPU_BUILDS = {"xgboost": ("xgboost-cpu", "2.1.0"), "tensorflow": ("tensorflow-cpu", "2.1.0")}
# PyTorch's CPU builds are the same versions with the local label `+cpu`, on PyTorch's own index, not on PyPI
# (whose Linux torch pulls ~3 GB of CUDA libraries). A pinned version gets the label, so an index lacking
# that CPU build fails the install rather than quietly serving PyPI's CUDA build.
TORCH_PACKAGES = frozenset({"torch", "torchvision", "torchaudio"})
CPU_LABEL = "cpu"
# A serving venv's bytecode cache (interpreter_environment).
PYCACHE = ".pycache"


@functools.cache
def bento_module(name: str):
    """A runtime module of the Bento (templates/bento/NAME.py), for the factory's own use of the same code."""
    spec = importlib.util.spec_from_file_location(name, BENTO_TEMPLATES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@functools.cache
def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK_FILE.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[canonicalize_name(name)] = version
    return pins


def _pinned(names: Iterable[str]) -> dict[str, Requirement]:
    pins = lock_pins()
    missing = sorted(name for name in names if canonicalize_name(name) not in pins)
    if missing:
        raise ServeError(f"{LOCK_FILE}: no pin for {', '.join(missing)}; regenerate requirements.lock")
    return {canonicalize_name(name): Requirement(f"{name}=={pins[canonicalize_name(name)]}") for name in names}


def resolve_requirements(model: list[Requirement], runtime_packages: Iterable[str], packages: Iterable[str],
                         native: bool, where: str, gpu: bool = False, torch_index: str = "") -> tuple[str, ...]:
    """Runtime pins ∪ the model's requirements ∪ models.yaml `serving.packages` (which win by name): the lines
    of the Bento's requirements.txt.

    A model requirement the lock pins compatibly is pinned to the lock's version, so every serving venv
    resolves the same way. One the lock does not satisfy (a model pickled under scikit-learn 1.3 and numpy 1)
    is served in the model's own versions, as `mlflow models serve` installs them: its requirements are kept
    as recorded and the runtime's other packages follow them (unpinned), except the service's own framework
    (SERVICE_PACKAGES), which a model cannot replace. Without a GPU, a requirement with a CPU-only build
    (CPU_BUILDS, TORCH_PACKAGES) is served with that build; PyTorch's then comes from `torch_index`, named
    first as an extra index."""
    overrides = {canonicalize_name(Requirement(line).name): Requirement(line) for line in packages}
    merged = _pinned([*BASE_PACKAGES, *runtime_packages])
    pins = lock_pins()
    wanted = {}
    for recorded in model:
        requirement = recorded if gpu else cpu_build(recorded)
        name = canonicalize_name(requirement.name)
        if {name, canonicalize_name(recorded.name)} & overrides.keys() or (native and name in NOT_NEEDED_NATIVE) \
                or not _applies(requirement):
            continue
        wanted[name] = requirement
        if name in SERVICE_PACKAGES and not requirement.specifier.contains(_version(merged[name]), prereleases=True):
            raise BuildError(
                f"{where}: the model requires {requirement} (its MLflow requirements.txt) but the served API runs on "
                f"{merged[name]} (requirements.lock), which a model cannot replace; re-log the model without "
                f"{requirement.name} in its pip_requirements, or with a version {merged[name]} satisfies")
    own = own_versions(wanted.values())
    for name, requirement in wanted.items():
        compatible = name in pins and requirement.specifier.contains(pins[name], prereleases=True)
        if name in SERVICE_PACKAGES or (compatible and not own and name in merged):
            continue  # the lock's pin (a service package was checked above)
        merged[name] = requirement if own or not compatible else Requirement(f"{requirement.name}=={pins[name]}")
    if own:  # the model's versions: what the runtime adds resolves against them, not against the lock
        merged.update({name: Requirement(pinned.name) for name, pinned in merged.items()
                       if name not in wanted and name not in SERVICE_PACKAGES})
    # A torch range the model recorded is left to the CPU index; an override without `+cpu`
    # (`serving.packages: ["torch==2.13.0"]`) restores PyPI's build, which the CPU index would outrank.
    ranges = not gpu and any(_torch_range(requirement) for name, requirement in merged.items() if name not in overrides)
    merged.update(overrides)
    lines = tuple(str(merged[name]) for name in sorted(merged))
    if torch_index and (ranges or any(_cpu_pinned(requirement) for requirement in merged.values())):
        return (f"--extra-index-url {torch_index}", *lines)
    return lines


def own_versions(requirements: Iterable[Requirement]) -> bool:
    """Whether a requirement set leaves the lock: some package the lock pins is wanted at another version."""
    pins = lock_pins()
    return any(not requirement.specifier.contains(pins[name], prereleases=True)
               for requirement in requirements if (name := canonicalize_name(requirement.name)) in pins)


def cpu_build(requirement: Requirement) -> Requirement:
    """`xgboost==3.2.0` → `xgboost-cpu==3.2.0`, `torch==2.13.0` → `torch==2.13.0+cpu`; kept as it is when the
    CPU build may not exist for the versions it allows (an upper bound or pin below xgboost's first CPU
    release, a torch pin naming another build such as `+cu126`). A torch range stays a range: the CPU index,
    named first, serves it."""
    if canonicalize_name(requirement.name) in TORCH_PACKAGES:
        return _torch_cpu(requirement)
    name, first = CPU_BUILDS.get(canonicalize_name(requirement.name), (None, None))
    if name is None or any(_below(spec, Version(first)) for spec in requirement.specifier):
        return requirement
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return Requirement(f"{name}{requirement.specifier}{marker}")


def _torch_cpu(requirement: Requirement) -> Requirement:
    specs = list(requirement.specifier)
    if len(specs) != 1 or specs[0].operator != "==" or "+" in specs[0].version or "*" in specs[0].version:
        return requirement
    marker = f"; {requirement.marker}" if requirement.marker else ""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return Requirement(f"{requirement.name}{extras}=={specs[0].version}+{CPU_LABEL}{marker}")


def _exact(requirement: Requirement) -> list[Specifier]:
    return [spec for spec in requirement.specifier if spec.operator in ("==", "===") and "*" not in spec.version]


def _torch_range(requirement: Requirement) -> bool:
    """A PyTorch package whose build the index chooses: a range, or no version at all."""
    return canonicalize_name(requirement.name) in TORCH_PACKAGES and not _exact(requirement)


def _cpu_pinned(requirement: Requirement) -> bool:
    return canonicalize_name(requirement.name) in TORCH_PACKAGES and any(
        Version(spec.version).local == CPU_LABEL for spec in _exact(requirement))


def _below(spec: Specifier, first: Version) -> bool:
    """Whether this clause allows only versions before `first`."""
    version = Version(spec.version.rstrip(".*"))
    return (spec.operator == "<" and version <= first) or (spec.operator in ("==", "===", "<=", "~=")
                                                            and version < first)


def _applies(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate()


def _version(requirement: Requirement) -> str:
    return next(iter(requirement.specifier)).version


def requirements_digest(requirements: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]


def bento_python(state: StateDir, model: str) -> Path:
    """The serving venv of a built model: the requirement set its build resolved."""
    return runtime_python(state.root, tuple(state.resolved(model).requirements))


def runtime_python(state_dir: Path, requirements: tuple[str, ...]) -> Path:
    """A venv holding exactly `requirements`, created once per distinct set (~1 minute each)."""
    settings = Settings.from_env()
    if settings.runtime_python:
        return settings.runtime_python
    digest = requirements_digest(requirements)
    base = settings.runtime_home or state_dir / "runtime"
    home = (base / digest).resolve()
    home.parent.mkdir(parents=True, exist_ok=True)
    # Parallel jobs (pytest-xdist, several `factory test`s) must not build the same venv at once.
    with open(home.parent / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / ".complete").is_file():
            _create(home, requirements)
    return home / "bin" / "python"


def venv_constraints(requirements: tuple[str, ...]) -> str:
    """The lock constrains what the requirements pull in, except packages the set itself names; a model served
    in its own versions (numpy 1, an older mlflow) resolves freely, as its image's uv does."""
    lines = [Requirement(line) for line in requirements if not line.startswith("-")]
    if own_versions(lines):
        return ""
    named = {canonicalize_name(requirement.name) for requirement in lines}
    return "".join(f"{name}=={version}\n" for name, version in sorted(lock_pins().items()) if name not in named)


def _create(home: Path, requirements: tuple[str, ...]) -> None:
    print(f"creating the serving venv {home} ({len(requirements)} requirements)", file=sys.stderr)
    _uv(home, "venv", "--quiet", "--clear", "--python", sys.executable, str(home))
    constraints = home / "constraints.txt"
    constraints.write_text(venv_constraints(requirements), encoding="utf-8")
    # The Bento's own requirements.txt, index lines included, installed by the same `uv` with the same flags as
    # the image's Dockerfile, so the venv resolves as the image does; venv and first start take 0.15-0.17x
    # pip's time (bench/venvs.py).
    # --native-tls: the system's CA store, as pip trusts it. No --compile-bytecode (images keep it): compiling every
    # module of mlflow's stack was most of a venv's creation, while a server imports a fraction of them, compiled
    # once into the venv's own cache (interpreter_environment).
    wanted = home / "requirements.txt"
    wanted.write_text("".join(f"{line}\n" for line in requirements), encoding="utf-8")
    _uv(home, "pip", "install", "--quiet", "--index-strategy", "unsafe-first-match",
        "--python", str(home / "bin" / "python"), "-c", str(constraints), "-r", str(wanted))
    (home / ".complete").write_text("\n".join(requirements) + "\n", encoding="utf-8")


def interpreter_environment(python: Path) -> dict[str, str]:
    """The environment to run `python` in on a Bento's or a model's files: their bytecode never lands beside
    them (a Bento's files are its image's layers: a __pycache__ there would change the image's digest).

    A serving venv of ours keeps the bytecode of what its servers import in its own cache (PYTHONPYCACHEPREFIX),
    so only the first start compiles (the native flavors' imports: 14.5 s uncompiled, 5.5 s compiled, measured
    here). Any other interpreter (the factory's own, FACTORY_RUNTIME_PYTHON) writes none."""
    environment = {name: value for name, value in child_environment().items() if name != "PYTHONDONTWRITEBYTECODE"}
    home = python.parent.parent
    if (home / ".complete").is_file():
        return {**environment, "PYTHONPYCACHEPREFIX": str(home / PYCACHE)}
    return {**environment, "PYTHONDONTWRITEBYTECODE": "1"}


def _uv(home: Path, *arguments: str) -> None:
    # The platform's index (credentials too) reaches uv through its environment only: factory/pipindex.py.
    settings = Settings.from_env()
    result = subprocess.run([find_uv_bin(), "--native-tls", *arguments], capture_output=True, text=True,
                            env={**child_environment(), **pipindex.uv_environment(settings)})
    if result.returncode != 0:
        # uv's cache defaults to ~/.cache/uv: a read-only or missing HOME (a locked-down host, a CI user) stops it.
        hint = ("\nuv's cache folder cannot be written: set UV_CACHE_DIR (or XDG_CACHE_HOME) to a writable folder"
                if "Failed to initialize cache" in result.stderr else "")
        raise ServeError(f"could not create the serving venv in {home} (`uv {arguments[0]}` exit "
                         f"{result.returncode}):\n{settings.redact(result.stderr[-2000:])}{hint}")
