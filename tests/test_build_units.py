"""What makes `factory build` build a model again: the factory that builds it is one of its inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

from factory.build import FACTORY_PACKAGE, factory_digest


def _copy_of_the_factory(target: Path) -> Path:
    package = target / "factory"
    shutil.copytree(FACTORY_PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(FACTORY_PACKAGE.parent / "requirements.lock", target / "requirements.lock")
    return package


def test_a_different_factory_is_a_different_build_input(tmp_path: Path) -> None:
    same, edited, repinned = (_copy_of_the_factory(tmp_path / name) for name in ("same", "edited", "repinned"))
    assert factory_digest(same) == factory_digest(FACTORY_PACKAGE)
    (edited / "onnx_convert.py").write_text((edited / "onnx_convert.py").read_text() + "\n# a converter fix\n")
    (repinned.parent / "requirements.lock").write_text("onnxruntime==0.0.1\n")
    assert len({factory_digest(same), factory_digest(edited), factory_digest(repinned)}) == 3


def test_an_installed_factory_without_its_lock_file_still_has_a_digest(tmp_path: Path) -> None:
    package = _copy_of_the_factory(tmp_path)
    (tmp_path / "requirements.lock").unlink()
    assert len(factory_digest(package)) == 64 and factory_digest(package) != factory_digest(FACTORY_PACKAGE)
