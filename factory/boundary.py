"""The CLI's error boundary: whatever escapes a command becomes one FactoryError, never a traceback.

Library code translates the errors it expects where they happen (with the models.yaml entry they
concern). This is the net under that: every library's error classes, matched by the module that
defines them so that `factory validate` never imports mlflow, bentoml, docker or kubernetes to check.
"""

from __future__ import annotations

import errno
import json
import subprocess

from factory.errors import FactoryError

HINTS_BY_ERRNO = {
    errno.ENOSPC: "free some disk space (or point FACTORY_STATE at a larger disk)",
    errno.EACCES: "check the permissions of that path (or point FACTORY_STATE somewhere writable)",
    errno.EROFS: "the file system is read-only: point FACTORY_STATE somewhere writable",
    errno.ENOENT: "run the command that creates it first (see README, Commands)",
}
LIBRARY_HINTS = {
    "docker": "check that the Docker engine runs and answers `docker info` (or stop it: without Docker the "
              "factory writes Dockerfiles and serves Bentos directly)",
    "bentoml": "if BentoML names an item that already exists in the store, a failed build left it behind: "
               "`bentoml delete -y TAG` (with the same BENTOML_HOME) and run the command again",
    "mlflow": "check MLFLOW_TRACKING_URI (unset: the project's registry/mlflow.db; `make registry` creates it) and "
              "MLFLOW_REGISTRY_URI (README, \"MLflow registries\")",
    "botocore": "an S3 artifact store: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and MLFLOW_S3_ENDPOINT_URL "
                "(README, \"MLflow registries\")",
    "kubernetes": "check KUBECONFIG and that the cluster answers `kubectl version`",
    "yaml": "check the YAML file's syntax around that line",
    "jinja2": "a template under templates/ failed: run `factory render` to see which",
    "pydantic": "the data does not have the shape the factory expects",
}


class UnexpectedError(FactoryError):
    """Something the factory did not anticipate; the message still says what and where."""


def translate(exc: BaseException) -> FactoryError:
    """One FactoryError for any exception, keeping its message and adding how to go on."""
    if isinstance(exc, FactoryError):
        return exc
    if isinstance(exc, RecursionError):
        return UnexpectedError("input nested too deeply to process (Python's recursion limit); "
                               "flatten the nesting of the file being read")
    if isinstance(exc, MemoryError):
        return UnexpectedError("out of memory; close other programs or work on fewer models at once")
    if isinstance(exc, UnicodeDecodeError):
        return UnexpectedError(f"a file is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8")
    if isinstance(exc, json.JSONDecodeError):
        return UnexpectedError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, subprocess.TimeoutExpired):
        return UnexpectedError(f"`{_command(exc.cmd)}` did not finish within {exc.timeout:.0f} s")
    if isinstance(exc, subprocess.CalledProcessError):
        return UnexpectedError(f"`{_command(exc.cmd)}` exited {exc.returncode}")
    library = _library(exc)
    message = _message(exc)
    if library in LIBRARY_HINTS:
        return UnexpectedError(f"{library}: {type(exc).__name__}: {message} (hint: {LIBRARY_HINTS[library]})")
    return UnexpectedError(f"unexpected {type(exc).__name__}: {message} (this is a bug in the factory: "
                           "please report it with the command that led here)")


def _os_error(exc: OSError) -> FactoryError:
    where = f"{exc.filename}: " if exc.filename else ""
    text = f"{where}{exc.strerror or _message(exc)}"
    hint = HINTS_BY_ERRNO.get(exc.errno or 0)
    return UnexpectedError(f"{text} (hint: {hint})" if hint else text)


def _library(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if root in LIBRARY_HINTS:
            return root
    return ""


def _message(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines[:3]) or repr(exc)
    return text if len(text) <= 500 else text[:497] + "..."


def _command(cmd) -> str:
    return cmd if isinstance(cmd, str) else " ".join(str(part) for part in cmd)
