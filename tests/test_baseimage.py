"""The base image is built only against an engine that answers: nothing runs debootstrap for nothing;
where a public Debian root is named (FACTORY_BASE_ROOTFS, GitLab's build jobs), it is pulled instead; and
where a cache is named (FACTORY_BASE_CACHE, GitLab's build jobs), a missing base is pulled from it, or
built and pushed to it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from factory import baseimage, dockerapi
from factory.baseimage import cache_reference, ensure_base_image, recipe_tags
from factory.errors import EngineError
from tests.e2e_support.oci import registry_serves


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


def test_the_cache_keeps_the_base_under_its_recipe_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACTORY_BASE_CACHE", raising=False)
    assert cache_reference("model-factory/python-base:0123abcd") == ""
    monkeypatch.setenv("FACTORY_BASE_CACHE", "registry.gitlab.com/g/p/model-factory/python-base")
    assert cache_reference("model-factory/python-base:0123abcd") == (
        "registry.gitlab.com/g/p/model-factory/python-base:0123abcd")


@pytest.mark.e2e
def test_a_missing_base_is_built_and_cached_then_pulled_from_the_cache(docker_engine: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """As two GitLab build jobs, each with a fresh engine, see it: the first finds no cached base, builds it
    and pushes it; the second pulls it and builds nothing. A recipe tag of the test's own stands in for the
    real one, so the session's base image is never removed; its layers come from the engine's build cache."""
    rootfs, real = recipe_tags()
    ensure_base_image(progress=lambda line: None)  # a no-op under `make test`, which built it
    hashed = uuid.uuid4().hex[:16]
    base, cache = f"model-factory/python-base:{hashed}", f"{docker_engine}/model-factory-test/python-base"
    cached = f"{cache}:{hashed}"
    monkeypatch.setattr(baseimage, "recipe_tags", lambda: (rootfs, base))
    monkeypatch.setenv("FACTORY_BASE_CACHE", cache)
    try:
        first: list[str] = []
        assert ensure_base_image(progress=first.append) == base
        assert first[0] == f"pulling {cached} (FACTORY_BASE_CACHE) as {base}"
        assert first[1].startswith(f"{cached} could not be pulled (") and first[1].endswith("); building it")
        assert "manifest unknown" in first[1]
        assert first[2:] == [f"building {base} (python3, venv, CA certificates, uv {baseimage.UV_VERSION})",
                             f"cached the base image at {cached}"]
        built = dockerapi.inspect(base)
        pushed = [reference for reference in built["RepoDigests"] if reference.startswith(cache + "@")]
        assert len(pushed) == 1 and registry_serves(pushed[0])

        for tag in (base, cached):
            dockerapi.remove(tag)
        monkeypatch.setattr(dockerapi, "build", lambda *args, **kwargs: pytest.fail("built, not pulled"))
        second: list[str] = []
        assert ensure_base_image(progress=second.append) == base
        assert second == [f"pulling {cached} (FACTORY_BASE_CACHE) as {base}"]
        assert dockerapi.inspect(base)["Id"] == built["Id"]
    finally:
        for tag in (base, cached):
            dockerapi.remove(tag)
