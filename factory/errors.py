"""One error tree for everything the factory reports to a user.

Third-party exceptions are translated into these once, where they cross into factory code
(`raise ... from exc`), so the CLI has a single boundary that prints them without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the user's input, located as precisely as we can."""

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: Optional[str] = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class FactoryError(Exception):
    """Base of every error the factory reports to its user."""

    exit_code = 1

    def lines(self) -> list[str]:
        return [str(self)]


class CatalogError(FactoryError):
    """models.yaml is invalid: carries every problem found, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(set(problems), key=lambda p: (p.line, p.column, p.path, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class SettingsError(FactoryError):
    """An environment variable the factory reads (factory/settings.py) holds a value it cannot use."""


class RenderError(FactoryError):
    """A template failed or produced output that does not parse."""


class OutOfDateError(FactoryError):
    """`render --check` found files on disk that differ from a fresh render."""


class RegistryError(FactoryError):
    """The MLflow registry could not answer, or lacks a model, version or signature."""


class BuildError(FactoryError):
    """Importing a model or `bentoml build` failed."""


class ServeError(FactoryError):
    """A served model did not come up, or failed while being tested."""


class ManifestError(FactoryError):
    """A Kubernetes manifest failed offline validation."""


class DeployError(FactoryError):
    """Applying manifests to a cluster failed (or no cluster is configured)."""


class StateError(FactoryError):
    """A file in the state directory is missing, truncated or not what the factory writes."""


class UsageError(FactoryError):
    """The command line asks for something that cannot be done (e.g. names a model the catalog lacks)."""


class EngineError(FactoryError):
    """The Docker engine, the local registry or the base image could not be started, reached or built."""


class ImageError(FactoryError):
    """Building or pushing an image failed."""


class WriteError(FactoryError):
    """A file or tree could not be written (full disk, no permission, read-only); factory/atomic.py says whether
    anything was changed."""
