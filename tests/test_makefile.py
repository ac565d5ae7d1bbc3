"""The Makefile's install path, run for real: `make apt-tools` with a package whose command is not on PATH.

`sl` is tiny and installs its command in /usr/games, which these tests leave off PATH: the recipe
always finds it missing and always runs apt-get update + install (a no-op install once it is there),
so every run exercises the path a fresh machine takes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sl"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # no /usr/games

pytestmark = [pytest.mark.xdist_group("apt"),  # one apt-get at a time
              pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: CI runs as root")]


def _shim(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(0o755)


def _apt_tools(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "--no-print-directory", "apt-tools", f"APT_TOOLS={PACKAGE}"], cwd=ROOT,
                          env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=300)


def _installed() -> bool:
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], capture_output=True, text=True)
    return status.stdout == "install ok installed"


def test_install_as_root_without_sudo(tmp_path: Path) -> None:
    """As root the recipe calls apt-get directly: a `sudo` that fails if called proves it is not used."""
    _shim(tmp_path, "sudo", 'echo "sudo called: $*" >&2; exit 99\n')
    result = _apt_tools(f"{tmp_path}:{SYSTEM_PATH}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"installing: {PACKAGE}"]
    assert "sudo called" not in result.stderr
    assert _installed()


def test_install_as_user_with_sudo(tmp_path: Path) -> None:
    """As a user the recipe prefixes sudo: `id -u` answers 1000, and a sudo shim logs then runs the command."""
    log = tmp_path / "sudo.log"
    _shim(tmp_path, "id", '[ "$1" = -u ] && echo 1000 || exec /usr/bin/id "$@"\n')
    _shim(tmp_path, "sudo", f'echo "$*" >> {log}\nexec "$@"\n')
    result = _apt_tools(f"{tmp_path}:{SYSTEM_PATH}")
    assert result.returncode == 0, result.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    assert calls == ["env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 update -qq",
                     f"env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq {PACKAGE}"]
    assert _installed()


@pytest.mark.parametrize("earlier_policy", [None, "#!/bin/sh\nexit 0\n"])
def test_installing_the_engine_starts_no_service_and_puts_the_policy_back(tmp_path: Path,
                                                                          earlier_policy: str | None) -> None:
    """An apt-get shim asks the policy, as docker.io's postinst does through invoke-rc.d, whether
    `docker start` may run: 101 (forbidden) during the install; the earlier policy (or none) after it."""
    policy, log = tmp_path / "policy-rc.d", tmp_path / "apt.log"
    if earlier_policy is not None:
        policy.write_text(earlier_policy, encoding="utf-8")
        policy.chmod(0o755)
    asks_policy = f'{policy} docker start; echo "docker start: $?" >> {log}'
    _shim(tmp_path, "apt-get", f'echo "$*" >> {log}\ncase "$*" in *install*) {asks_policy};; esac\n')
    result = subprocess.run(["make", "-s", "--no-print-directory", "apt-engine", "ENGINE_APT=docker.io",
                             "ENGINE_COMMANDS=no-such-command-mf", f"POLICY_RC={policy}"], cwd=ROOT,
                            env={**os.environ, "PATH": f"{tmp_path}:{SYSTEM_PATH}"}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert log.read_text(encoding="utf-8").splitlines() == [
        "-o DPkg::Lock::Timeout=120 update -qq",
        "-o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends docker.io", "docker start: 101"]
    assert (policy.read_text(encoding="utf-8") if policy.exists() else None) == earlier_policy


def test_a_user_without_sudo_is_told_what_is_missing_and_the_command_to_install_it(tmp_path: Path) -> None:
    """Not root and no sudo (session 10): one line naming the package and root's command, never `sudo: not found`."""
    _shim(tmp_path, "id", '[ "$1" = -u ] && echo 1000 || exec /usr/bin/id "$@"\n')
    for tool in ("make", "sh", "bash", "env", "echo", "apt-get", "dpkg-query"):  # a PATH of these, without sudo
        (tmp_path / tool).symlink_to(Path("/usr/bin", tool) if Path("/usr/bin", tool).exists() else Path("/bin", tool))
    result = _apt_tools(str(tmp_path))
    assert (result.returncode, result.stdout) == (2, f"installing: {PACKAGE}\n")
    assert result.stderr.splitlines()[0] == (f"make apt-tools: missing: {PACKAGE}; not root and no sudo: as root run "
                                             f"apt-get install -y {PACKAGE}")


def test_an_npm_that_cannot_install_gitlab_ci_local_says_which_variable_helps(tmp_path: Path) -> None:
    """npm with a read-only HOME fails saying only that its logs could not be written (session 10)."""
    _shim(tmp_path, "npm", 'echo "npm error Log files were not written" >&2; exit 1\n')
    result = subprocess.run(["make", "-s", "--no-print-directory", "tools", "APT_TOOLS=", "GITLAB_CI_LOCAL=/none"],
                            cwd=ROOT, env={**os.environ, "PATH": f"{tmp_path}:{SYSTEM_PATH}"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[:2] == [
        "npm error Log files were not written",
        "make tools: npm could not install gitlab-ci-local 4.73.0 into .tools/ (its error is above); where HOME is not "
        "writable, set npm_config_cache to a writable folder"]


def test_no_python_311_is_one_line_and_a_half_made_venv_is_removed(tmp_path: Path) -> None:
    """A fresh machine without python3.11 got `python3.11: command not found`; one without python3.11-venv kept a
    venv with no pip, which every later `make` reused and failed in (session 10)."""
    def venv(python: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", "--no-print-directory", "venv", f"VENV={tmp_path / 'venv'}",
                               f"PYTHON={python}"], cwd=ROOT, capture_output=True, text=True, timeout=60)

    missing = venv(str(tmp_path / "python3.11"))
    assert missing.returncode == 2 and missing.stderr.splitlines()[0] == (
        f"make: {tmp_path / 'python3.11'} not found: the factory runs on Python 3.11; install it (Debian: apt-get "
        "install python3.11 python3.11-venv; elsewhere: uv python install 3.11) or name one: make "
        "PYTHON=/path/to/python3.11")
    _shim(tmp_path, "python3.11", 'mkdir -p "$3/bin" && ln -s /bin/true "$3/bin/python"; '
                                  'echo "The virtual environment was not created successfully because ensurepip is not '
                                  'available." >&2; exit 1\n')
    half = venv(str(tmp_path / "python3.11"))
    assert half.returncode == 2 and "ensurepip is not available" in half.stderr
    assert not (tmp_path / "venv").exists()
