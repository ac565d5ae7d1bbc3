"""Who holds and releases the project's engine: root, the socket's other users, and a laptop's own Docker."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from factory import engine


@pytest.fixture
def stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """engine.RUN_DIR in a scratch folder (tmp_path/run); the uid of every stop of the daemons, recorded instead."""
    monkeypatch.setattr(engine, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(engine, "PROJECT_HOST", f"unix://{tmp_path / 'run' / 'docker.sock'}")
    calls: list[int] = []
    monkeypatch.setattr(engine, "down", lambda progress=print: calls.append(os.geteuid()))
    return calls


def test_a_laptops_docker_is_neither_held_nor_stopped_and_nothing_is_written_in_run(
        tmp_path: Path, stopped: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """A data scientist's `make demo` (not root, Docker on the default socket) died in `engine.hold` with
    `PermissionError: '/run/model-factory'`, as a test session's teardown would have (session 10)."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    engine.hold(4242)
    engine.release()
    assert not (tmp_path / "run").exists() and stopped == []


def test_the_sockets_other_users_hold_the_project_engine_and_leave_roots_daemons_to_root(
        tmp_path: Path, stopped: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """A member of the socket's group got `PermissionError: '/run/model-factory/holders/22777'` from `make demo`
    (session 10): the holders folder is anyone's to add to, as /tmp is, and only root stops the daemons."""
    monkeypatch.setenv("DOCKER_HOST", engine.PROJECT_HOST)
    engine.hold(4242)  # root's `make test`
    holders = tmp_path / "run" / "holders"
    assert stat.S_IMODE(holders.stat().st_mode) == 0o1777
    monkeypatch.setattr(os, "geteuid", lambda: 1001)
    engine.hold()
    engine.release()
    assert sorted(path.name for path in holders.iterdir()) == ["4242"] and stopped == []
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    engine.release()
    assert stopped == [0]
