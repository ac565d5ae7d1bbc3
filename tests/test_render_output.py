"""Where `factory render -o DIR` may write: it replaces DIR whole, so it never replaces what it did not write,
fails with one line naming -o, and leaves the previous tree as it was when a write fails or is interrupted."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory import atomic
from factory.cli import main

CATALOG = "- {name: m_a, version: 1, endpoint: p}\n"


def _render(tmp_path: Path, out: str):
    return CliRunner().invoke(main, ["render", "-f", str(tmp_path / "models.yaml"), "-o", out])


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.yaml").write_text(CATALOG)
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "routes.yaml").write_text("old\n")
    (tmp_path / ".mixed.keep").write_text("")
    (tmp_path / "mixed" / ".gitignore").write_text("*\n")
    return tmp_path


CASES = [
    ("the catalog's own directory", ".",
     "-o .: holds '.mixed.keep', 'a_file', 'mixed' and 2 more, which factory render did not write; render replaces "
     "the whole directory, so pass a new or empty directory (e.g. -o build) or the output of an earlier render"),
    ("a directory holding one foreign file", "mixed",
     "-o mixed: holds '.gitignore', which factory render did not write; render replaces the whole directory, so "
     "pass a new or empty directory (e.g. -o build) or the output of an earlier render"),
    ("a file", "a_file",
     "-o a_file: is a file, not a directory; pass a directory for the rendered tree (it is created if missing)"),
    ("under a file", "a_file/build",
     "-o a_file/build: is under {root}/a_file, which is a file, not a directory; pass a directory for the rendered "
     "tree (it is created if missing)"),
    ("a place nothing can be created", "/proc/1/build",
     "-o /proc/1/build: cannot write the rendered tree (No such file or directory); nothing was changed there: "
     "pass -o a directory on a writable disk"),
]


@pytest.mark.parametrize("label, out, message", CASES, ids=[case[0] for case in CASES])
def test_an_output_render_may_not_replace_is_refused_and_left_alone(project: Path, label: str, out: str,
                                                                    message: str) -> None:
    before = _tree(project)
    result = _render(project, out)
    assert (result.exit_code, result.stderr) == (1, message.format(root=project) + "\n")
    assert _tree(project) == before


def test_a_disk_full_write_names_the_output_and_keeps_the_previous_tree(project: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _render(project, "build").exit_code == 0
    before = _tree(project)
    (project / "models.yaml").write_text(CATALOG.replace("m_a", "m_b"))
    before["models.yaml"] = (project / "models.yaml").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_write_new", full)
    result = _render(project, "build")
    assert (result.exit_code, result.stderr) == (1, "-o build: cannot write the rendered tree (No space left on "
                                                    "device); nothing was changed there: free space on that disk, "
                                                    "or pass -o a directory on a writable disk\n")
    assert _tree(project) == before
    assert sorted(p.name for p in project.iterdir() if p.name.startswith(".build")) == []


def test_the_rendered_tree_gets_the_umask_mode_not_a_private_one(project: Path) -> None:
    old = os.umask(0o022)
    try:
        assert _render(project, "build").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((project / "build").stat().st_mode) == 0o755
