"""Session fixtures for end-to-end tests: a real MLflow registry and real Bento builds, made once."""

from __future__ import annotations

import pytest

from e2e_support.factory_env import ALIAS_MODEL, MIXED_MODEL, FactoryEnv, make_factory_env


@pytest.fixture(scope="session")
def factory_env(tmp_path_factory: pytest.TempPathFactory) -> FactoryEnv:
    return make_factory_env(tmp_path_factory.mktemp("factory"))


@pytest.fixture(scope="session")
def built(factory_env: FactoryEnv) -> FactoryEnv:
    factory_env.run("build", MIXED_MODEL, ALIAS_MODEL)
    return factory_env
