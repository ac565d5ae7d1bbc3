"""The serving runtime: the packages a Bento's image installs, and a local venv with exactly those.

Memory measured on the factory's own venv would be wrong: it holds mlflow and pandas, and sklearn
imports pandas whenever it is installed (+70 MiB). Models are tested and measured in a lean venv
built from the same pinned packages the Bento's container gets.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import subprocess
import sys
import venv
from pathlib import Path

from factory.errors import ServeError
from factory.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = ROOT / "requirements.lock"
RUNTIME_PACKAGES = ("bentoml", "numpy", "pydantic", "scikit-learn", "skops", "uvicorn")


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK_FILE.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower()] = version
    return pins


@functools.cache
def runtime_requirements() -> tuple[str, ...]:
    """Pinned requirement lines for a served Bento, in a stable order."""
    pins = _pins()
    missing = [name for name in RUNTIME_PACKAGES if name not in pins]
    if missing:
        raise ServeError(f"{LOCK_FILE}: no pin for {', '.join(missing)}; regenerate requirements.lock")
    return tuple(f"{name}=={pins[name]}" for name in RUNTIME_PACKAGES)


def runtime_python(state_dir: Path) -> Path:
    """A venv holding only the runtime packages (created once per pin set, ~1 minute)."""
    settings = Settings.from_env()
    if settings.runtime_python:
        return settings.runtime_python
    requirements = runtime_requirements()
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    base = settings.runtime_home or state_dir / "runtime"
    home = (base / digest).resolve()
    home.parent.mkdir(parents=True, exist_ok=True)
    # Parallel jobs (pytest-xdist, several `factory test`s) must not build the same venv at once.
    with open(home.parent / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / ".complete").is_file():
            _create(home, requirements)
    return home / "bin" / "python"


def _create(home: Path, requirements: tuple[str, ...]) -> None:
    python = home / "bin" / "python"
    print(f"creating the serving runtime venv {home} ({len(requirements)} pinned packages)", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, clear=True).create(home)
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "-c", str(LOCK_FILE), *requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServeError(f"could not create the serving runtime in {home}:\n{result.stderr[-2000:]}")
    (home / ".complete").write_text("\n".join(requirements) + "\n", encoding="utf-8")
