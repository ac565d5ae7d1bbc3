"""An engine that answers but cannot build: one clear error per model, no traceback, every Bento still built."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from e2e_support.factory_env import ALIAS_MODEL, MIXED_MODEL, FactoryEnv

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("registry")]  # needs only factory_env: the other worker

# Answers `docker info` and `docker image inspect` (so the engine and base image look present), fails builds.
FAKE_DOCKER = """#!/bin/sh
case "$1" in
  info|image) exit 0 ;;
  build) echo "Step 1/9 : FROM model-factory/python-base"; echo "no space left on device" >&2; exit 1 ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
"""


def test_failing_builder_gives_one_clear_error_per_model(factory_env: FactoryEnv, tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    docker = fake_bin / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "state"
    env = {**factory_env.env, "PATH": f"{fake_bin}:{factory_env.env['PATH']}", "FACTORY_STATE": str(state),
           "BENTOML_HOME": str(state / "bentoml")}
    result = FactoryEnv(factory_env.root, env).run("build", MIXED_MODEL, ALIAS_MODEL, "--proxy", check=False)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("3 image(s) failed (the other builds are recorded):")
    for model in (MIXED_MODEL, ALIAS_MODEL):
        log = state / "builds" / model / "image.log"
        assert f"{model}: built" in result.stdout and "image FAILED" in result.stdout
        assert f"model '{model}': image 127.0.0.1:5000/model-factory-test/" in result.stderr
        assert (state / "builds" / model / "record.json").is_file()
        assert f"full log: {log}" in result.stderr and "no space left on device" in log.read_text()
    assert result.stderr.count("`docker build` failed (exit 1); its last lines:\n    Step 1/9") == 3
    assert "proxy image: `docker build` failed (exit 1)" in result.stderr
