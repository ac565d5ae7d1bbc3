"""Nothing partial is written: a failure (a full disk, no permission, Ctrl-C) at any step of any command's
write leaves what was there before byte for byte, and says which path, why and how to fix it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from factory import atomic
from factory.errors import WriteError
from factory.render import render_catalog, write_tree
from factory.loader import parse_catalog
from factory.state import StateDir, TestReport, write_atomic
from factory.test import save_report
from tests.test_no_traceback import CATALOG, run, write_state

IN_STATE = "point FACTORY_STATE at a writable disk"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Faults:
    """The disk-changing steps of factory/atomic.py, counted; the `at`-th raises `error`. (Removing temporary
    files is cleanup, not a step: its errors are ignored, and the output is complete by then.)"""

    STEPS = ("write", "fsync", "replace", "rename", "link", "fchmod")

    def __init__(self, at: int | None, error: BaseException):
        self.at, self.error, self.steps = at, error, 0

    def __getattr__(self, name: str):
        real = getattr(os, name)
        if name not in self.STEPS:
            return real

        def step(*args, **kwargs):
            self.steps += 1
            if self.steps == self.at:
                raise self.error
            # Durability is not what these tests check: a real fsync per step would cost seconds.
            return None if name == "fsync" else real(*args, **kwargs)
        return step


def each_fault(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> Iterator[Faults]:
    """Faults at step 1, 2, 3 ... until a run gets through them all (the caller runs the writer once per fault)."""
    at = 1
    while True:
        faults = Faults(at, error)
        monkeypatch.setattr(atomic, "os", faults)
        yield faults
        if faults.steps < at:  # this run had fewer steps than the fault's index: every step has been failed
            return
        at += 1


FAILURES = [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()]
FAILURE_IDS = ["ENOSPC", "Ctrl-C"]


def _project(tmp_path: Path) -> Path:
    (tmp_path / "models.yaml").write_text(CATALOG)
    write_state(tmp_path)
    return tmp_path


@pytest.mark.parametrize("error", FAILURES, ids=FAILURE_IDS)
def test_manifests_failing_at_any_write_leave_the_previous_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     error: BaseException) -> None:
    root = _project(tmp_path)
    report = StateDir(root / "state").report_path("beta")
    old_peak, new_peak = report.read_text(), report.read_text().replace('"peak_bytes": 209715200',
                                                                        '"peak_bytes": 409715200')
    assert run(root, "manifests").exit_code == 0
    before = _tree(root / "state")
    report.write_text(new_peak)
    assert run(root, "manifests").exit_code == 0
    after = _tree(root / "state")
    assert {name for name in before if before[name] != after[name]} == {"k8s/beta/deployment.yaml",
                                                                         "reports/beta/report.json"}
    report.write_text(old_peak)
    assert run(root, "manifests").exit_code == 0 and _tree(root / "state") == before
    failed = (130, "interrupted\n") if isinstance(error, KeyboardInterrupt) else (1, (
        f"{root}/state/k8s: cannot write the manifests (No space left on device); nothing was changed there: "
        f"free space on that disk, or {IN_STATE}\n"))
    outcomes = []
    for faults in each_fault(monkeypatch, error):
        report.write_text(new_peak)
        result = run(root, "manifests")
        now = _tree(root / "state")
        outcome = "previous" if now == _with_report(before, new_peak) else "new" if now == after else "MIXED"
        outcomes.append((result.exit_code, outcome))
        assert (result.exit_code, result.stderr) in (failed, (0, "")), faults.at
        assert sorted(p.name for p in (root / "state").iterdir()) == ["builds", "k8s", "reports"]  # no temporaries
        report.write_text(old_peak)
        _put_back(root / "state" / "k8s", before)
    # A failure at any step leaves the previous manifests; only the last steps, syncing the directory after
    # its swap, come after the new tree is complete: an error there is ignored, Ctrl-C finds the new tree.
    swapped = next(index for index, (_, outcome) in enumerate(outcomes) if outcome == "new")
    assert len(outcomes) > 10 and outcomes[:swapped] == [(failed[0], "previous")] * swapped
    assert set(outcomes[swapped:]) == {(0, "new")} | ({(130, "new")} if isinstance(error, KeyboardInterrupt) else set())
    monkeypatch.setattr(atomic, "os", os)
    report.write_text(new_peak)
    assert run(root, "manifests").exit_code == 0
    mtime = (root / "state" / "k8s").stat().st_mtime_ns
    assert run(root, "manifests").exit_code == 0  # deterministic: a second run changes nothing, not even mtimes
    assert _tree(root / "state") == after and (root / "state" / "k8s").stat().st_mtime_ns == mtime


def _put_back(k8s: Path, tree: dict[str, bytes]) -> None:
    shutil.rmtree(k8s)
    for name, data in tree.items():
        if name.startswith("k8s/"):
            (k8s.parent / name).parent.mkdir(parents=True, exist_ok=True)
            (k8s.parent / name).write_bytes(data)


def _with_report(tree: dict[str, bytes], report: str) -> dict[str, bytes]:
    return {**tree, "reports/beta/report.json": report.encode()}


def _writers(root: Path) -> dict[str, Callable[[int], None]]:
    """Each writer that keeps a set together, as a function of a run number (so every run writes new content)."""
    state = StateDir(root / "state")

    def report(n: int) -> None:
        save_report(state, TestReport(model="alpha", route="/a", passed=False, error=f"run {n}"),
                    f"<junit run='{n}'/>".encode(), f'{{"run": {n}}}\n' if n % 2 else None)

    def summary(n: int) -> None:
        (root / "models.yaml").write_text(_catalog(n))
        result = run(root, "summary")
        if result.exit_code == 130:
            raise KeyboardInterrupt
        if result.exit_code:
            raise WriteError(result.stderr)

    rendered = {n: render_catalog(parse_catalog(_catalog(n))) for n in (1, 2)}

    def render(n: int) -> None:
        write_tree(rendered[n], root / "build")

    def record(n: int) -> None:
        write_atomic(state.summary_json(), f"{n}\n")

    def build(n: int) -> None:
        with atomic.staged_tree(state.build_dir("alpha"), "the build of alpha", IN_STATE,
                                prefix="alpha.building-") as stage:
            writes = state.staging("alpha", stage)
            write_atomic(writes.golden_path("alpha"), f"[{n}]")
            write_atomic(writes.resolved_path("alpha"), f"{{\"run\": {n}}}")
            write_atomic(writes.record_path("alpha"), f"{{\"run\": {n}}}")

    return {"report": report, "summary": summary, "render": render, "record": record, "build": build}


@pytest.mark.parametrize("writer", ["report", "summary", "render", "record", "build"])
@pytest.mark.parametrize("error", FAILURES, ids=FAILURE_IDS)
def test_every_writer_failing_at_any_step_leaves_the_previous_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    writer: str, error: BaseException) -> None:
    root = _project(tmp_path)
    write = _writers(root)[writer]
    write(1)
    before = _outputs(root)
    write(2)
    after = _outputs(root)
    write(1)
    assert _outputs(root) == before != after
    for faults in each_fault(monkeypatch, error):
        try:
            write(2)
        except (WriteError, KeyboardInterrupt) as exc:
            assert type(exc) is type(error) if isinstance(error, KeyboardInterrupt) else \
                "No space left on device); nothing was changed there: free space on that disk" in str(exc)
            # Only Ctrl-C after the last rename (while it is made durable) may find the new files, all of them.
            assert _outputs(root) == before or isinstance(error, KeyboardInterrupt) and _outputs(root) == after, \
                faults.at
        else:
            assert _outputs(root) == after, faults.at  # the fault came after the last rename, or there was none
        monkeypatch.setattr(atomic, "os", os)
        write(1)
    assert faults.at > 2


def _catalog(n: int) -> str:
    return CATALOG.replace("parameters: [a]", f"parameters: [a{n}]")


def _outputs(root: Path) -> dict[str, bytes]:
    return {name: data for name, data in _tree(root).items() if name != "models.yaml"}


PLACE = "/s/summary.json"
MESSAGES = [
    (errno.ENOSPC, f"{PLACE}: cannot write (No space left on device); nothing was changed there: free space on that "
                   f"disk, or {IN_STATE}"),
    (errno.EDQUOT, f"{PLACE}: cannot write (Disk quota exceeded); nothing was changed there: free space within your "
                   f"disk quota, or {IN_STATE}"),
    (errno.EACCES, f"{PLACE}: cannot write (Permission denied); nothing was changed there: make /s writable for this "
                   f"user, or {IN_STATE}"),
    (errno.EPERM, f"{PLACE}: cannot write (Operation not permitted); nothing was changed there: make /s writable for "
                  f"this user, or {IN_STATE}"),
    (errno.EROFS, f"{PLACE}: cannot write (Read-only file system); nothing was changed there: remount its file system "
                  f"read-write, or {IN_STATE}"),
    (errno.EIO, f"{PLACE}: cannot write (Input/output error); nothing was changed there: {IN_STATE}"),
]


@pytest.mark.parametrize("code, message", MESSAGES, ids=[errno.errorcode[code] for code, _ in MESSAGES])
def test_write_errors_name_the_path_why_and_the_fix(code: int, message: str) -> None:
    assert str(atomic.write_error(Path(PLACE), OSError(code, os.strerror(code)), IN_STATE)) == message


def test_a_failed_rollback_says_where_the_previous_tree_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "k8s"
    atomic.replace_tree(out, {"a.yaml": "old\n"}, "the manifests", IN_STATE)
    real_rename, renames = os.rename, []

    def failing(source, target):
        renames.append(target)
        if len(renames) >= 2:  # the new tree's rename, then the rollback's
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_rename(source, target)

    monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)  # a kernel without renameat2
    monkeypatch.setattr(atomic.os, "rename", failing)
    with pytest.raises(WriteError) as caught:
        atomic.replace_tree(out, {"a.yaml": "new\n"}, "the manifests", IN_STATE)
    kept = tmp_path / f".k8s.old-{os.getpid()}"
    assert str(caught.value) == (f"{out}: cannot write the manifests (Input/output error); the previous tree is kept "
                                 f"at {kept}: move {kept} back to {out}")
    assert _tree(kept) == {"a.yaml": b"old\n"}


def test_without_renameat2_an_interrupted_swap_puts_the_previous_tree_back(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out, old, new = tmp_path / "build", {"a": "old\n", "sub/b": "old\n"}, {"a": "new\n"}
    monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)
    outcomes = []
    for faults in each_fault(monkeypatch, KeyboardInterrupt()):
        monkeypatch.setattr(atomic, "os", os)
        atomic.replace_tree(out, old, "the tree", IN_STATE)
        monkeypatch.setattr(atomic, "os", faults)
        with contextlib.suppress(KeyboardInterrupt):
            atomic.replace_tree(out, new, "the tree", IN_STATE)
        outcomes.append({"a": b"old\n", "sub/b": b"old\n"} == _tree(out) or _tree(out) == {"a": b"new\n"} and "new")
        assert os.listdir(tmp_path) == ["build"]
    # Interrupted anywhere up to the new tree's rename, the old tree is back; after it, the new one is whole.
    swapped = outcomes.index("new")
    assert swapped >= 3 and outcomes == [True] * swapped + ["new"] * (len(outcomes) - swapped)


def test_files_and_trees_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic.write_file(tmp_path / "one", "x", IN_STATE)
        atomic.replace_files({tmp_path / "set": "x"}, IN_STATE)
        atomic.replace_tree(tmp_path / "tree", {"sub/f": "x"}, "the tree", IN_STATE)
    finally:
        os.umask(old)
    modes = {path: stat.S_IMODE((tmp_path / path).stat().st_mode) for path in ("one", "set", "tree", "tree/sub",
                                                                                  "tree/sub/f")}
    assert modes == {"one": 0o640, "set": 0o640, "tree": 0o750, "tree/sub": 0o750, "tree/sub/f": 0o640}


@contextlib.contextmanager
def _tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"a real full disk needs a tmpfs mount, which this machine refuses: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_keeps_the_previous_files_and_trees(tmp_path: Path) -> None:
    with _tiny_disk(tmp_path) as disk:
        atomic.write_file(disk / "record.json", "old\n", IN_STATE)
        atomic.replace_tree(disk / "k8s", {"a.yaml": "old\n"}, "the manifests", IN_STATE)
        big = "x" * 100_000
        with pytest.raises(WriteError) as file_error:
            atomic.write_file(disk / "record.json", big, IN_STATE)
        with pytest.raises(WriteError) as tree_error:
            atomic.replace_tree(disk / "k8s", {"a.yaml": "new\n", "b.yaml": big}, "the manifests", IN_STATE)
        assert str(file_error.value) == (f"{disk}/record.json: cannot write (No space left on device); nothing was "
                                         f"changed there: free space on that disk, or {IN_STATE}")
        assert str(tree_error.value) == (f"{disk}/k8s: cannot write the manifests (No space left on device); nothing "
                                         f"was changed there: free space on that disk, or {IN_STATE}")
        assert _tree(disk) == {"record.json": b"old\n", "k8s/a.yaml": b"old\n"}
        assert sorted(os.listdir(disk)) == ["k8s", "record.json"]


def test_a_killed_writers_staging_directory_is_swept_by_the_next_write(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, a lost CI runner) mid-build leaves its staging directory; the next build of that
    model removes it, but never one a live writer holds, one just made, or another model's."""
    out_dir = tmp_path / "builds" / "alpha"
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\nfrom pathlib import Path\nfrom factory import atomic\n"
        "with atomic.staged_tree(Path(sys.argv[1]), 'the build of alpha', '', prefix='alpha.building-') as stage:\n"
        "    (stage / 'golden.json').write_text('[1]')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(out_dir)], cwd=Path(__file__).parents[1])
    assert killed.returncode == -signal.SIGKILL
    (abandoned,) = out_dir.parent.glob("alpha.building-*")
    live, fresh, other = (out_dir.parent / name for name in ("alpha.building-live", "alpha.building-fresh",
                                                             "alpha2.building-old"))
    for directory in (live, fresh, other):
        directory.mkdir()
    long_ago = time.time() - atomic.ABANDONED_AFTER_S - 1
    for directory in (abandoned, live, other):
        os.utime(directory, (long_ago, long_ago))
    holder = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with atomic.staged_tree(out_dir, "the build of alpha", IN_STATE, prefix="alpha.building-") as stage:
            (stage / "golden.json").write_text("[2]")
    finally:
        os.close(holder)
    assert sorted(path.name for path in out_dir.parent.iterdir()) == [
        "alpha", "alpha.building-fresh", "alpha.building-live", "alpha2.building-old"]
    assert (out_dir / "golden.json").read_text() == "[2]"
