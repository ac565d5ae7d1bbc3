"""Session fixtures for end-to-end tests: a real MLflow registry, real Bento builds and (where a Docker
engine runs or can be started) real images in a local registry, made once."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from e2e_support.factory_env import ALIAS_MODEL, MIXED_MODEL, FactoryEnv, make_factory_env
from factory import engine


@pytest.fixture(autouse=True)
def _mlflow_uris_stay_the_tests_own() -> Iterator[None]:
    """MLflow's set_tracking_uri / set_registry_uri (factory.registry calls both) also write os.environ, so a test
    resolving models in process left MLFLOW_REGISTRY_URI behind: a later test's subprocess, given only
    MLFLOW_TRACKING_URI, registered its model in that stale registry instead (test_e2e_tracking_server, once)."""
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The engine and registry, started if needed and stopped after the last session using them.

    Without one (not root, no Docker) image tests skip with the reason; `make test` as root (CI) sets
    FACTORY_REQUIRE_ENGINE, and then a missing engine fails them instead.
    """
    reason = engine.up(progress=lambda line: None)
    if reason:
        if os.environ.get("FACTORY_REQUIRE_ENGINE"):
            pytest.fail(f"image tests must run here (FACTORY_REQUIRE_ENGINE is set), but: {reason}")
        pytest.skip(f"no Docker engine: {reason}")
    engine.hold()
    yield engine.REGISTRY
    engine.release(progress=lambda line: None)


@pytest.fixture(scope="session")
def factory_env(tmp_path_factory: pytest.TempPathFactory) -> FactoryEnv:
    return make_factory_env(tmp_path_factory.mktemp("factory"))


@pytest.fixture(scope="session")
def built(factory_env: FactoryEnv, request: pytest.FixtureRequest) -> FactoryEnv:
    """Both e2e models built; with images (and the proxy image) pushed whenever an engine is available."""
    try:
        request.getfixturevalue("docker_engine")
    except pytest.skip.Exception:
        pass  # the host-process path: Bentos only, as on a machine without Docker
    factory_env.run("build", MIXED_MODEL, ALIAS_MODEL, "--proxy")
    return factory_env


@pytest.fixture(scope="session")
def tested(built: FactoryEnv) -> FactoryEnv:
    result = built.run("test", MIXED_MODEL, ALIAS_MODEL, "--examples", "40")
    assert f"{MIXED_MODEL}: passed" in result.stdout and f"{ALIAS_MODEL}: passed" in result.stdout
    return built
