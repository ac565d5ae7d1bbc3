"""A real example registry and real builds, made once per test session in a temporary directory."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
FACTORY = [sys.executable, "-m", "factory.cli"]
# The two models e2e tests build: one with integer, string, boolean and optional columns; one doubles-only
# with column names that are not Python identifiers, served through an MLflow alias.
MIXED_MODEL = "match_probability_2_TAXI_trafficaware"
ALIAS_MODEL = "eta_minutes_5_PHV"
LOCAL_IMAGE_REGISTRY = "127.0.0.1:5000/model-factory-test"


@dataclass(frozen=True)
class FactoryEnv:
    root: Path
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return Path(self.env["FACTORY_STATE"])

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        """This environment in the test process itself (for in-process factory calls), restored after."""
        previous = dict(os.environ)
        os.environ.update(self.env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(previous)

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run([*FACTORY, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"factory {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result


def example_module(name: str):
    """examples/NAME.py as a module (examples/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_factory_env(base: Path) -> FactoryEnv:
    registry = base / "registry"
    env = {**os.environ,
           "MLFLOW_TRACKING_URI": f"sqlite:///{registry / 'mlflow.db'}",
           "FACTORY_STATE": str(base / "state"),
           "BENTOML_HOME": str(base / "state" / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
           # Images go to the local registry (models.yaml names a production one).
           "FACTORY_IMAGE_REGISTRY": LOCAL_IMAGE_REGISTRY,
           # The lean serving venv is slow to create: share one per machine across test sessions.
           "FACTORY_RUNTIME_HOME": os.environ.get("FACTORY_RUNTIME_HOME", str(ROOT / "factory-state" / "runtime"))}
    subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), "--registry", str(registry)],
                   cwd=base, env=env, check=True, capture_output=True, timeout=300)
    return FactoryEnv(base, env)
