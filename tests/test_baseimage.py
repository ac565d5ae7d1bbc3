"""The base image is built only against an engine that answers: nothing runs debootstrap for nothing;
and where a public Debian root is named (FACTORY_BASE_ROOTFS, GitLab's build jobs), it is pulled instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from factory.baseimage import ensure_base_image
from factory.errors import EngineError


def _debootstrap(folder: Path) -> Path:
    calls = folder / "calls.log"
    (folder / "debootstrap").write_text(f'#!/bin/sh\necho "debootstrap $*" >> {calls}\nexit 0\n', encoding="utf-8")
    (folder / "debootstrap").chmod(0o755)
    return calls


def test_no_engine_is_said_before_debootstrap_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _debootstrap(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'gone.sock'}")
    with pytest.raises(EngineError) as error:
        ensure_base_image(progress=lambda line: None)
    assert str(error.value) == (f"no Docker engine answers at unix://{tmp_path / 'gone.sock'} (its API did not answer "
                                "/_ping), so the base image cannot be built; start one with `make engine` (as root) "
                                "or point DOCKER_HOST at a running engine")
    assert not calls.exists()


@pytest.mark.e2e
def test_a_named_public_root_is_pulled_not_debootstrapped(docker_engine: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _debootstrap(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    missing = f"{docker_engine}/model-factory-test/no-such-debian:bookworm"
    monkeypatch.setenv("FACTORY_BASE_ROOTFS", missing)
    progress: list[str] = []
    with pytest.raises(EngineError) as error:
        ensure_base_image(progress=progress.append)
    assert progress == [f"pulling {missing} (FACTORY_BASE_ROOTFS) as the base image's Debian root"]
    assert str(error.value).startswith(f"pulling {missing} failed; the engine's last lines:\nNotFound: 404 ")
    assert "manifest unknown" in str(error.value)
    assert not calls.exists()
