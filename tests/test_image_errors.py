"""An engine that answers but cannot build: one clear error per model, no traceback, every Bento still built."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e_support.factory_env import ALIAS_MODEL, MIXED_MODEL, FactoryEnv
from e2e_support.fake_engine import failing_engine

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("registry")]  # needs only factory_env: the other worker


def test_failing_builder_gives_one_clear_error_per_model(factory_env: FactoryEnv, tmp_path: Path) -> None:
    state = tmp_path / "state"
    socket = tmp_path / "engine.sock"
    env = {**factory_env.env, "DOCKER_HOST": f"unix://{socket}", "FACTORY_STATE": str(state),
           "BENTOML_HOME": str(state / "bentoml")}
    with failing_engine(socket) as posted:
        result = FactoryEnv(factory_env.root, env).run("build", MIXED_MODEL, ALIAS_MODEL, "--proxy", check=False)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert [path.rsplit("/", 1)[1] for path in posted] == ["build"] * 3  # nothing pushed after a failed build
    assert result.stderr.startswith("3 image(s) failed (the other builds are recorded):")
    for model in (MIXED_MODEL, ALIAS_MODEL):
        log = state / "builds" / model / "image.log"
        assert f"{model}: built" in result.stdout and "image FAILED" in result.stdout
        assert f"model '{model}': image 127.0.0.1:5000/model-factory-test/" in result.stderr
        assert (state / "builds" / model / "record.json").is_file()
        assert f"full log: {log}" in result.stderr and "no space left on device" in log.read_text()
    assert result.stderr.count("the engine's build failed; its last lines:\n"
                               "    Step 1/9 : FROM model-factory/python-base\n"
                               "    no space left on device\n  full log: ") == 3
    assert "proxy image: the engine's build failed" in result.stderr
