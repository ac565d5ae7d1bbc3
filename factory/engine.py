"""The Docker engine and OCI registry images are built, pushed and measured with.

Where an engine already answers on $DOCKER_HOST (a laptop's Docker), it is used as it is. Otherwise, as
root, the project runs its own: Debian's `dockerd` on a project-owned socket (never the default one, which
other tools probe) and Debian's `docker-registry` on 127.0.0.1:5000, both with pid files so the test
session and `make clean` stop exactly what was started here. `python -m factory.engine up|down|status`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from factory.dockerapi import answers as engine_answers
from factory.errors import EngineError
from factory.settings import Settings, child_environment

RUN_DIR = Path("/run/model-factory")
ENGINE_HOME = Path("/var/lib/model-factory")
PROJECT_HOST = f"unix://{RUN_DIR / 'docker.sock'}"
REGISTRY = "127.0.0.1:5000"
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Daemon:
    """A background process the project starts, known by its pid file."""

    name: str
    command: tuple[str, ...]

    @property
    def pid_file(self) -> Path:
        return RUN_DIR / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return ENGINE_HOME / f"{self.name}.log"

    def pid(self) -> Optional[int]:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Started from a short-lived intermediate process, so the daemon is nobody's child here: a test
        session or `make` that started it can end (or count its own children) without it."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        intermediate = os.fork()
        if intermediate == 0:
            try:
                with open(self.log, "ab") as sink:
                    process = subprocess.Popen(self.command, stdout=sink, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True, cwd=RUN_DIR,
                                               env=child_environment())
                self.pid_file.write_text(f"{process.pid}\n")
            finally:
                os._exit(0)
        os.waitpid(intermediate, 0)

    def stop(self, timeout_s: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


DOCKERD = Daemon("dockerd", (
    "dockerd", "--host", PROJECT_HOST, "--data-root", str(ENGINE_HOME / "docker"),
    "--exec-root", str(RUN_DIR / "exec"), "--pidfile", str(RUN_DIR / "dockerd-self.pid"),
    # Host networking only: no bridge, no iptables rules on a machine shared with other work.
    "--bridge", "none", "--iptables=false", "--ip-masq=false"))
REGISTRY_DAEMON = Daemon("registry", ("docker-registry", "serve", str(ENGINE_HOME / "registry.yml")))

REGISTRY_CONFIG = """\
# Written by factory.engine: the local OCI registry images are pushed to, on loopback only.
version: 0.1
log: {{level: warn}}
storage:
  filesystem: {{rootdirectory: {root}}}
  delete: {{enabled: true}}
http: {{addr: "{addr}"}}
"""


def docker_host() -> Optional[str]:
    return Settings.from_env().docker_host


def registry_answers(address: str = REGISTRY) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def why_no_engine() -> Optional[str]:
    """None when the project can run its own engine here; else the reason it cannot."""
    if docker_host() != PROJECT_HOST:
        return f"no Docker engine answers at {docker_host() or 'the default socket'}"
    if os.geteuid() != 0:
        return "no Docker engine answers and starting one needs root (run `make engine` as root)"
    missing = [tool for tool in ("dockerd", "docker-registry") if not _which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed (run `make engine` as root: it installs Debian's docker.io)"
    return None


def _which(tool: str) -> bool:
    return bool(shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin"))


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Parallel test workers and CI jobs must not start two engines at once."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    # Read-only: a lock needs no write access, and the socket's other users (its group) lock root's file too.
    lock = os.open(RUN_DIR / "engine.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def up(progress=print) -> Optional[str]:
    """Make sure an engine and the registry answer; None when they do, else why images are skipped."""
    if not engine_answers():
        reason = why_no_engine()
        if reason:
            return reason
        with _locked():
            if not engine_answers():
                _start(DOCKERD, engine_answers, f"dockerd on {PROJECT_HOST}")
                progress(f"started dockerd on {PROJECT_HOST} (pid {DOCKERD.pid()}, log {DOCKERD.log})")
    if not registry_answers():
        with _locked():
            if not registry_answers():
                _start_registry()
                progress(f"started docker-registry on {REGISTRY} (pid {REGISTRY_DAEMON.pid()}, "
                         f"storage {ENGINE_HOME / 'registry'})")
    return None


def _start_registry() -> None:
    if not _which("docker-registry"):
        raise EngineError(f"no OCI registry answers on {REGISTRY} and docker-registry is not installed; "
                          "run `make engine` as root (installs Debian's docker-registry)")
    ENGINE_HOME.mkdir(parents=True, exist_ok=True)
    (ENGINE_HOME / "registry.yml").write_text(
        REGISTRY_CONFIG.format(root=ENGINE_HOME / "registry", addr=REGISTRY), encoding="utf-8")
    _start(REGISTRY_DAEMON, registry_answers, f"docker-registry on {REGISTRY}")


def _start(daemon: Daemon, ready, what: str) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    daemon.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        if daemon.pid() is None:
            break
        time.sleep(0.3)
    raise EngineError(f"{what} did not come up within {READY_TIMEOUT_S:.0f} s; its log ({daemon.log}) ends with:\n"
                      + "\n".join(daemon.log.read_text(errors="replace").splitlines()[-10:]))


def down(progress=print) -> None:
    """Stop the dockerd and registry this project started (by pid file); leave any other engine alone."""
    for daemon in (REGISTRY_DAEMON, DOCKERD):
        if daemon.stop():
            progress(f"stopped {daemon.name}")


def hold(pid: Optional[int] = None) -> None:
    """Mark a process (a test session, a `make demo`) as using the project's engine, so another's release keeps it
    up. Any user its socket lets in (the `docker` group) may: as in /tmp, anyone adds a file, only its owner removes
    it. Another engine (a laptop's Docker) is not the project's to stop, so nothing is held, nor written in /run."""
    if docker_host() != PROJECT_HOST:
        return
    holders = RUN_DIR / "holders"
    holders.mkdir(parents=True, exist_ok=True)
    if holders.stat().st_uid == os.geteuid():
        holders.chmod(0o1777)
    (holders / str(pid or os.getpid())).touch()


def release(progress=print) -> None:
    """This process is done with the engine: stop the project's daemons unless some other live process,
    not one of ours (the `make test` that started this session), still holds it. They are root's (only root
    starts them), so another user only lets go."""
    if docker_host() != PROJECT_HOST:
        return
    holders = RUN_DIR / "holders"
    with _locked():
        (holders / str(os.getpid())).unlink(missing_ok=True)
        if os.geteuid() != 0:
            return
        ours = _ancestors()
        others = [path for path in holders.glob("*")
                  if path.name.isdigit() and int(path.name) not in ours and _alive(int(path.name))]
        if not others:
            down(progress)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "up":
        try:
            reason = up()
            if not reason and len(argv) > 1:
                hold(int(argv[1]))  # `make`: the engine stays up while this make runs
        except EngineError as exc:
            print(exc, file=sys.stderr)
            return 1
        if reason:
            print(f"images skipped: {reason}")
            return 0
        from factory.baseimage import ensure_base_image

        print(f"engine ready at {docker_host() or 'the default socket'}, registry {REGISTRY}, "
              f"base image {ensure_base_image(progress=print)}")
    elif command == "down":
        down()
    elif command == "status":
        print(f"engine: {'answers' if engine_answers() else 'none'} ({docker_host() or 'default socket'}); "
              f"registry {REGISTRY}: {'answers' if registry_answers() else 'none'}")
    else:
        print("usage: python -m factory.engine up [HOLDER_PID]|down|status", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
