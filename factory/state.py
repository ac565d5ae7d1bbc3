"""Where the factory keeps what it produces after render: build records, reports, sized manifests.

One directory (default `factory-state/`, or $FACTORY_STATE) so CI can pass it between jobs as an artifact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE = Path("factory-state")  # not hidden: BentoML refuses to build from hidden paths


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def from_env(cls, default: Path = DEFAULT_STATE) -> "StateDir":
        return cls(Path(os.environ.get("FACTORY_STATE", default)).resolve())

    def activate(self) -> "StateDir":
        """Keep BentoML's model and Bento stores inside the state directory unless BENTOML_HOME says otherwise."""
        os.environ.setdefault("BENTOML_HOME", str(self.root / "bentoml"))
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        return self

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def build_dir(self, model: str) -> Path:
        return self._dir("builds", model)

    def record(self, model: str) -> Path:
        return self.build_dir(model) / "record.json"

    def report_dir(self, model: str) -> Path:
        return self._dir("reports", model)

    def manifests_dir(self) -> Path:
        return self._dir("k8s")
