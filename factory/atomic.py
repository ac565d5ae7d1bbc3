"""The one owner of writes a reader must never see half done: a file, a set of files, or a whole tree.

- `write_file`: a temporary file beside the target, flushed to disk (fsync), renamed over it (os.replace).
- `replace_files`: several such files, all or none: every new file is complete before the first rename, and a
  failure between renames puts back the files already replaced.
- `staged_tree` / `replace_tree`: a directory built whole beside its target, flushed (one syncfs, not an fsync
  per file), then swapped in (one atomic exchange where the kernel has renameat2, else two renames with
  rollback); the previous tree is intact until then, and is put back when the swap fails or is interrupted.

Each writes files with the mode a plain `open` would give (the umask's), never mkstemp's private 0600, and
turns a failure of the write itself (a full disk, a read-only or unwritable place) into one WriteError naming
the path, why, and how to fix it. Ctrl-C before the last rename leaves the previous state, after it the new
one (never a mix), and no temporary file behind. A staging directory a killed process (SIGKILL, the OOM killer)
left behind is removed by the next write of the same tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import glob
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Union

from factory.errors import WriteError

Data = Union[str, bytes]
# One file of a set: its new content, or None when the set no longer has it (it is removed with the others'
# replacement, and put back with them when that fails).
Member = Optional[Data]

# Where to write instead, for what goes under the state directory (every command but render writes there).
IN_STATE = "point FACTORY_STATE at a writable disk"
FIXES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EACCES: "make {dir} writable for this user",
    errno.EPERM: "make {dir} writable for this user",
    errno.EROFS: "remount its file system read-write",
}
# A staging directory holds its writer's lock (flock) while in use: one that is unlocked and older than this
# belongs to a writer that was killed (SIGKILL, the OOM killer, a lost CI runner) before it could remove it.
# The age covers the moment between a new staging directory's creation and its lock.
ABANDONED_AFTER_S = 60.0


def write_file(path: Path, data: Data, elsewhere: str) -> None:
    """Readers see the old file or the new one, never part of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = _temp_beside(path, data)
        try:
            os.replace(temp, path)
        except BaseException:
            _remove(temp)
            raise
        _settle(path.parent)
    except OSError as exc:
        raise write_error(path, exc, elsewhere) from exc


def replace_files(files: Mapping[Path, Member], elsewhere: str) -> None:
    """Every file of `files` replaced (or removed), or (on any failure, Ctrl-C included) none of them."""
    staged: dict[Path, Optional[Path]] = {}
    backups: dict[Path, Path] = {}
    replaced: list[Path] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            staged[path] = None if data is None else _temp_beside(path, data)
        for path, temp in staged.items():
            if path.exists():
                backups[path] = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.link(path, backups[path])
            if temp is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(temp, path)
            replaced.append(path)
        for directory in {path.parent for path in files}:
            _settle(directory)
    except BaseException as exc:
        for path in reversed(replaced):
            _restore(path, backups.get(path))
        _remove(*filter(None, staged.values()))
        if isinstance(exc, OSError):
            raise write_error(_failed(exc, files), exc, elsewhere) from exc
        raise
    finally:
        _remove(*backups.values())


def replace_tree(out_dir: Path, files: Mapping[str, Data], what: str, elsewhere: str,
                 where: str | None = None) -> None:
    """`out_dir` becomes exactly `files` (relative POSIX names), all at once."""
    with staged_tree(out_dir, what, elsewhere, where) as staging:
        directories = {staging}
        for name, data in files.items():
            target = staging / name
            if target.parent not in directories:
                target.parent.mkdir(parents=True, exist_ok=True)
                directories.add(target.parent)
            _write_new(target, data)


@contextlib.contextmanager
def staged_tree(out_dir: Path, what: str, elsewhere: str, where: str | None = None,
                prefix: str = "") -> Iterator[Path]:
    """An empty directory to build the new tree in; swapped in for `out_dir` when the block ends without an
    error. Any error, or Ctrl-C, leaves `out_dir` as it was and removes the staging directory; staging directories of
    killed writers (`_sweep_abandoned`) go first. `where` names
    `out_dir` in errors as the user gave it (default: the path); `prefix` names the staging directory
    (default: hidden, `.<name>.new-`)."""
    prefix = prefix or f".{out_dir.name}.new-"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _sweep_abandoned(out_dir.parent, prefix)
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir.parent))
    except OSError as exc:
        raise write_error(out_dir, exc, elsewhere, what, where) from exc
    lock: Optional[int] = None
    try:
        lock = _lock(staging)
        staging.chmod(0o777 & ~umask())  # mkdtemp's 0700 would become the output directory's mode
        yield staging
        _sync_filesystem(staging)
        _swap(staging, out_dir, lambda lost, kept: write_error(
            out_dir, lost, f"move {kept} back to {out_dir}", what, where, f"the previous tree is kept at {kept}"))
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(out_dir, exc, elsewhere, what, where) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def write_error(path: Path, exc: OSError, elsewhere: str, what: str = "", where: str | None = None,
                changed: str = "") -> WriteError:
    """`where` (default `path`): cannot write [what] (why); nothing was changed there: how to fix."""
    fix = FIXES.get(exc.errno or 0, "").format(dir=path.parent)
    fix = f"{fix}, or {elsewhere}" if fix else elsewhere
    outcome = changed or "nothing was changed there"
    return WriteError(f"{where or path}: cannot write{' ' + what if what else ''} ({exc.strerror or exc}); "
                      f"{outcome}: {fix}")


def umask() -> int:
    """The process's umask, read without setting it (os.umask would briefly change it for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- internals ---------------------------------------------------------------------------------


def _lock(directory: Path) -> Optional[int]:
    """An open descriptor holding `directory`'s lock until it is closed; None where the file system has no
    flock (there no sweeper can take the lock either, so nothing is swept)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _sweep_abandoned(parent: Path, prefix: str) -> None:
    """Remove the staging directories (`prefix`*) that killed writers left in `parent`. Best effort: one that
    cannot be examined or removed stays, and never fails the write that found it."""
    for candidate in parent.glob(glob.escape(prefix) + "*"):
        with contextlib.suppress(OSError):
            if candidate.is_symlink() or time.time() - candidate.stat().st_mtime < ABANDONED_AFTER_S:
                continue
            lock = _lock(candidate)
            if lock is not None:  # no live writer holds it
                try:
                    shutil.rmtree(candidate)
                finally:
                    os.close(lock)


def _temp_beside(path: Path, data: Data) -> Path:
    """A complete, flushed copy of `data` in `path`'s directory (so the rename cannot cross file systems)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as sink:
            sink.write(data.encode("utf-8") if isinstance(data, str) else data)
            sink.flush()
            os.fchmod(sink.fileno(), 0o666 & ~umask())
            os.fsync(sink.fileno())
    except BaseException:
        _remove(temp)
        raise
    return temp


def _write_new(path: Path, data: Data) -> None:
    """One file of a staged tree (flushed with the others by `_sync_filesystem`, not one fsync each)."""
    view = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _swap(staging: Path, out_dir: Path, lost_error: Callable[[OSError, Path], WriteError]) -> None:
    if not out_dir.exists():
        os.rename(staging, out_dir)
    elif _exchange(staging, out_dir):
        pass  # staging now holds the previous tree; the caller's cleanup removes it
    else:
        retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.rename(out_dir, retired)
        try:
            os.rename(staging, out_dir)
        except BaseException as exc:  # Ctrl-C or a failure between the renames: the previous tree goes back
            try:
                os.rename(retired, out_dir)
            except OSError as lost:
                raise lost_error(lost, retired) from exc
            raise
        shutil.rmtree(retired, ignore_errors=True)
    _settle(out_dir.parent)


AT_FDCWD = -100
RENAME_EXCHANGE = 2


@functools.cache
def _libc_function(name: str) -> Optional[Callable[..., int]]:
    return getattr(ctypes.CDLL(None, use_errno=True), name, None)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the C library, kernel or file system cannot."""
    renameat2 = _libc_function("renameat2")
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _sync_filesystem(directory: Path) -> None:
    """Flush everything written under `directory` before it is swapped in: one syncfs(2) of its file system
    (a render of 1,000 models writes ~6,000 files; an fsync each took 12 s on this VM's disk)."""
    syncfs = _libc_function("syncfs")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _sync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a crash after it must not bring the old entry back)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _settle(directory: Path) -> None:
    """Sync a directory after its rename: the new content is in place by then, so a failure here must not be
    reported as a write that changed nothing (it only means the rename may not survive a power cut)."""
    with contextlib.suppress(OSError):
        _sync_dir(directory)


def _restore(path: Path, backup: Optional[Path]) -> None:
    with contextlib.suppress(OSError):
        if backup is None:
            path.unlink()
        else:
            os.replace(backup, path)


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _failed(exc: OSError, files: Mapping[Path, Member]) -> Path:
    """The target whose write failed (an OSError names the temporary file or the target)."""
    name = Path(exc.filename) if exc.filename else None
    for path in files:
        if name is not None and (name == path or name.parent == path.parent and name.name.startswith(f".{path.name}.")):
            return path
    return next(iter(files))
