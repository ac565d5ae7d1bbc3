"""What makes `factory build` build a model again: the factory that builds it is one of its inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from factory.build import FACTORY_PACKAGE, BuildOutcome, _describe, factory_digest, unrecorded
from factory.state import BuildRecord, StateDir


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


def _record(state: StateDir, serving_path: str = "native", bento_tag: str = "m:1111111111111111") -> BuildRecord:
    record = BuildRecord(model="m", content_hash="0" * 64, registry={}, bento_model_tag="m:r1", bento_tag=bento_tag,
                         bento_export="/x/m.bento", image="r/m:1", dockerfile="/x/Dockerfile", golden="/x/golden.json",
                         serving_path=serving_path)
    record.save(state.record_path("m"))
    return record


@pytest.mark.parametrize("record, message", [
    (None, "no build record names it ({path} is missing: deleted, or the build that made the Bento stopped before "
           "writing it)"),
    ('{"model": "m", "content_', "its build record {path} is unreadable (a build stopped while writing it?)"),
    ("other", "its build record {path} names m:2222222222222222, built since from other content (a change undone?)"),
])
def test_a_bento_in_the_store_without_its_record_is_explained_by_what_the_record_shows(tmp_path: Path, record,
                                                                                        message: str) -> None:
    state = StateDir(tmp_path)
    path = state.record_path("m")
    path.parent.mkdir(parents=True)
    if record == "other":
        _record(state, bento_tag="m:2222222222222222")
    elif record is not None:
        path.write_text(record)
    assert unrecorded(state, "m") == message.format(path=path)


@pytest.mark.parametrize("serving_path", ["compiled", "native", "pyfunc"])
def test_the_build_line_says_which_form_serves(tmp_path: Path, serving_path: str) -> None:
    state = StateDir(tmp_path)
    state.build_dir("m").mkdir(parents=True)
    record = _record(state, serving_path)
    assert _describe(BuildOutcome("m", record, skipped=False, seconds=1.25)) == \
        f"built m:1111111111111111 in 1.2 s, serves {serving_path}"
    assert _describe(BuildOutcome("m", record, skipped=True, seconds=0.1)) == \
        f"unchanged, skipped (m:1111111111111111, serves {serving_path})"


def test_a_record_written_before_pyfunc_was_said_still_loads(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.build_dir("m").mkdir(parents=True)
    document = json.loads(_record(state).model_dump_json())
    document.pop("serving_path")  # records older still: before serving_path existed
    state.record_path("m").write_text(json.dumps(document))
    assert state.build_record("m").serving_path == "native"
