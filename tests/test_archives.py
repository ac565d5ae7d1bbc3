"""Archives unpack on every Python 3.11, with or without PEP 706's extraction filters (Debian's 3.11.2 has none)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from factory.archives import unpack


def _archive(*members: tuple[str, bytes | str]) -> tarfile.TarFile:
    """(name, bytes) a file; (name, "->target") a symlink; (name, "=>target") a hard link."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, content in members:
            entry = tarfile.TarInfo(name)
            if isinstance(content, str):
                entry.type = tarfile.SYMTYPE if content.startswith("->") else tarfile.LNKTYPE
                entry.linkname = content[2:]
                tar.addfile(entry)
            else:
                entry.size = len(content)
                tar.addfile(entry, io.BytesIO(content))
    data.seek(0)
    return tarfile.open(fileobj=data)


@pytest.fixture(params=["filters", "no filters"])
def python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "no filters":  # Python before 3.11.4: `factory build` died in extractall (session 10)
        monkeypatch.delattr(tarfile, "data_filter")
    return request.param


def test_a_bento_export_unpacks_with_its_links(python: str, tmp_path: Path) -> None:
    unpack(_archive(("src/service.py", b"x"), ("src/link.py", "->service.py"), ("env/hard.py", "=>src/service.py")),
           tmp_path)
    assert [(tmp_path / name).read_bytes() for name in ("src/service.py", "src/link.py", "env/hard.py")] == [b"x"] * 3


@pytest.mark.parametrize("member", [("../escape.py", b"x"), ("/tmp/escape.py", b"x"), ("a/../../escape.py", b"x"),
                                    ("src/out", "->../../etc/passwd"), ("src/abs", "->/etc/passwd"),
                                    ("src/hard", "=>../etc/passwd")])
def test_nothing_lands_or_points_outside_the_target(python: str, tmp_path: Path, member: tuple) -> None:
    """Refused, or (the data filter, for an absolute name) put inside the target."""
    target = tmp_path / "target"
    try:
        unpack(_archive(member), target)
    except tarfile.TarError:
        pass
    written = list(tmp_path.rglob("*"))
    assert [path for path in written if path != target and target not in path.parents] == []
    assert [path for path in written if path.is_symlink() and target not in path.resolve().parents] == []
    assert not Path("/tmp/escape.py").exists()
