"""Unpacking the tar archives the factory reads (a Bento export, a `git archive`) on every Python 3.11 it runs on.

Python's extraction filters (PEP 706) came with 3.11.4: Debian bookworm's python3.11 is 3.11.2, and there
`extractall(filter="data")` is a TypeError. Where they are missing, what the "data" filter refuses (a path that is
absolute or leaves the target, a link leading out of it, a device or FIFO) is refused here before unpacking.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path


def unpack(archive: tarfile.TarFile, target: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        archive.extractall(target, filter="data")
        return
    for member in archive.getmembers():
        escapes = _outside(member.name)
        if member.issym():
            escapes = escapes or _outside(os.path.join(os.path.dirname(member.name), member.linkname))
        elif member.islnk():
            escapes = escapes or _outside(member.linkname)
        if escapes or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise tarfile.TarError(f"{member.name!r} is refused: it would land outside {target} or is not a regular "
                                   "file, folder or link inside it")
    archive.extractall(target)


def _outside(name: str) -> bool:
    return os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == ".."
