"""Creating a serving venv: the factory's `uv pip install` (factory/runtime.py) against the `pip install` it replaced.

Usage: python -m bench.venvs [--repeats 3] [--packages mlflow,pandas,scikit-learn]
Each round creates the same venv four ways, interleaved: pip and uv, each with an empty package cache (a fresh CI
runner, a new laptop) and then with the cache that run left (the next model with the same requirement set after a
cache restore). The requirement set is what a pyfunc model's Bento installs: the runtime's base packages and the
given ones, at requirements.lock's versions, constrained by the lock as the factory constrains it. What a model
waits for is the venv and then its server's imports: each venv then imports a pyfunc server's stack twice, in the
environment a model server gets (runtime.interpreter_environment): pip compiled every module's bytecode while
installing, the factory's venv compiles what is imported, once, at the first start. Prints the median seconds of
each and uv's ratio to pip. Both fetch from the package index over the network: run it on a quiet machine and
compare within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from factory import runtime

TIMEOUT_S = 900
SERVER_IMPORTS = "import bentoml, mlflow.pyfunc, pandas, sklearn, uvicorn, uvloop"


def requirement_set(extra: list[str]) -> tuple[str, ...]:
    pins = runtime.lock_pins()
    return tuple(sorted(f"{name}=={pins[name]}" for name in {*runtime.BASE_PACKAGES, *extra}))


def pip_venv(home: Path, requirements: tuple[str, ...], cache: Path) -> Path:
    """The serving venv as the factory created it before uv: stdlib venv with pip, then `pip install`."""
    venv.EnvBuilder(with_pip=True, clear=True).create(home)
    wanted, constraints = _requirement_files(home, requirements)
    subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-c", str(constraints), "-r", str(wanted)], check=True, timeout=TIMEOUT_S,
                   env={**os.environ, "PIP_CACHE_DIR": str(cache)})
    return home / "bin" / "python"


def uv_venv(home: Path, requirements: tuple[str, ...], cache: Path) -> Path:
    """The serving venv as the factory creates it now (factory/runtime.py, the code that ships)."""
    os.environ.update(UV_CACHE_DIR=str(cache), FACTORY_RUNTIME_HOME=str(home))
    os.environ.pop("FACTORY_RUNTIME_PYTHON", None)
    return runtime.runtime_python(home, requirements)


def import_seconds(python: Path) -> float:
    started = time.perf_counter()
    subprocess.run([str(python), "-c", SERVER_IMPORTS], check=True, timeout=TIMEOUT_S,
                   env=runtime.interpreter_environment(python))
    return time.perf_counter() - started


def _requirement_files(home: Path, requirements: tuple[str, ...]) -> tuple[Path, Path]:
    constraints = home / "constraints.txt"
    constraints.write_text(runtime.venv_constraints(requirements), encoding="utf-8")
    wanted = home / "requirements.txt"
    wanted.write_text("".join(f"{line}\n" for line in requirements), encoding="utf-8")
    return wanted, constraints


def one_round(requirements: tuple[str, ...], scratch: Path) -> dict[str, float]:
    times = {}
    for name, create in (("pip", pip_venv), ("uv", uv_venv)):
        with tempfile.TemporaryDirectory(dir=scratch, prefix=f"{name}-cache-") as cache:
            for state in ("cold", "warm"):
                with tempfile.TemporaryDirectory(dir=scratch, prefix=f"{name}-venv-") as home:
                    started = time.perf_counter()
                    python = create(Path(home) / "venv", requirements, Path(cache))
                    times[f"{name} {state}"] = time.perf_counter() - started
                    times[f"{name} {state} first start"] = times[f"{name} {state}"] + import_seconds(python)
                    times[f"{name} {state} restart"] = import_seconds(python)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--packages", default="mlflow,pandas,scikit-learn")
    parser.add_argument("--scratch", default=tempfile.gettempdir())
    args = parser.parse_args()
    requirements = requirement_set([name.strip() for name in args.packages.split(",") if name.strip()])
    print(f"{len(requirements)} requirements: {' '.join(requirements)}", file=sys.stderr)
    rounds = []
    for index in range(args.repeats):
        rounds.append(one_round(requirements, Path(args.scratch)))
        print(f"round {index + 1}: " + ", ".join(f"{key} {value:.1f} s" for key, value in rounds[-1].items()),
              file=sys.stderr)
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print(f"median of {args.repeats} rounds{'':<34} {'pip s':>7} {'uv s':>7} {'uv / pip':>9}")
    for state in ("cold", "warm"):
        for phase, label in (("", "venv created"), (" first start", "venv + first server imports"),
                             (" restart", "server imports again")):
            pip, uv = medians[f"pip {state}{phase}"], medians[f"uv {state}{phase}"]
            print(f"{state + ' package cache, ' + label:<50} {pip:7.1f} {uv:7.1f} {uv / pip:9.3f}")


if __name__ == "__main__":
    main()
