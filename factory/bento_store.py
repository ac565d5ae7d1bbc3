"""The BentoML store builds land in: whether it holds a model or a Bento, importing a Bento a CI job
downloaded as an exported artifact, and the `bentoml` CLI the build runs (in the factory's own environment,
minus the registry's credentials: factory/settings.py `child_environment`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

from factory.errors import BuildError
from factory.settings import child_environment
from factory.state import BuildRecord, StateDir

BENTOML = [sys.executable, "-m", "bentoml"]


def ensure_in_store(record: BuildRecord) -> None:
    """A CI job downloads the build job's exported Bento as an artifact: import it once into this store."""
    if bento_exists(record.bento_tag):
        return
    export = _export_file(record)
    if export is None:
        raise BuildError(f"Bento {record.bento_tag} is neither in the BentoML store nor at {record.bento_export}; "
                         f"run `factory build {record.model}` again")
    run(BENTOML + ["import", str(export)], f"importing {export} failed")


def _export_file(record: BuildRecord) -> Optional[Path]:
    """The exported Bento: where the build wrote it, or beside the record (a CI job's workspace moves)."""
    for candidate in (Path(record.bento_export),
                      StateDir.from_env().build_dir(record.model) / Path(record.bento_export).name):
        if candidate.is_file():
            return candidate
    return None


def restored(record: BuildRecord) -> bool:
    """Whether the recorded Bento is in the store, imported from its export if need be."""
    try:
        ensure_in_store(record)
    except BuildError:
        return False
    return True


def model_dir(bento_model_tag: str) -> Path:
    """The registry model's MLflow directory, as imported into the BentoML model store."""
    import bentoml

    return Path(bentoml.models.get(bento_model_tag).path_of("mlflow_model"))


def model_exists(tag: str) -> bool:
    import bentoml

    return _in_store(bentoml.models.get, tag)


def bento_exists(tag: str) -> bool:
    import bentoml

    return _in_store(bentoml.get, tag)


def _in_store(get, tag: str) -> bool:
    import bentoml

    try:
        get(tag)
        return True
    except bentoml.exceptions.NotFound:
        return False


def run(command: list[str], failure: str, cwd: Optional[Path] = None) -> str:
    env = {**child_environment(), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode != 0:
        raise BuildError(f"{failure} (exit {result.returncode}):\n{(result.stderr or result.stdout)[-2000:]}")
    return result.stdout
