"""The base image is built only against an engine that answers: nothing runs debootstrap for nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.baseimage import ensure_base_image
from factory.errors import EngineError


def _tool(folder: Path, name: str, script: str) -> None:
    (folder / name).write_text("#!/bin/sh\n" + script, encoding="utf-8")
    (folder / name).chmod(0o755)


def test_no_engine_is_said_before_debootstrap_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls.log"
    _tool(tmp_path, "docker", f'echo "docker $*" >> {calls}; echo "Cannot connect to the Docker daemon" >&2; exit 1\n')
    _tool(tmp_path, "debootstrap", f'echo "debootstrap $*" >> {calls}; exit 0\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'gone.sock'}")
    with pytest.raises(EngineError) as error:
        ensure_base_image(progress=lambda line: None)
    assert str(error.value) == (f"no Docker engine answers at unix://{tmp_path / 'gone.sock'} (`docker info` failed), "
                                "so the base image cannot be built; start one with `make engine` (as root) or point "
                                "DOCKER_HOST at a running engine")
    assert calls.read_text(encoding="utf-8").splitlines() == ["docker info"]
