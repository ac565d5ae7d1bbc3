"""The base image every model and the proxy are built on, made from Debian packages.

Its Debian root: locally, debootstrap (minbase bookworm, from the host's apt mirror) → `docker import`, as
no image can be pulled here; where public images can be pulled (a GitLab runner), the image named in
$FACTORY_BASE_ROOTFS (pipeline.base_rootfs, a Debian bookworm image). On it, the same Python layer (python3,
python3-venv, CA certificates including the host's extra ones, the `uv` binary). The tag carries a hash of
the whole recipe, so it is built once per engine and reused until the recipe changes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from uv import find_uv_bin

from factory import dockerapi
from factory.engine import ENGINE_HOME, docker_host, engine_answers
from factory.errors import EngineError
from factory.images import registry_auth
from factory.render import environment
from factory.settings import Settings, child_environment

SUITE = "bookworm"
# The `uv` the factory itself runs (requirements.lock): serving venvs and images install with one version.
UV_VERSION = importlib.metadata.version("uv")
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
Progress = Callable[[str], None]


def apt_mirror(sources: tuple[Path, ...] = (Path("/etc/apt/sources.list"),)) -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line format); Debian's own otherwise."""
    files = [*sources, *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        text = path.read_text(errors="replace") if path.is_file() else ""
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1)
            if not uri.rstrip("/").endswith("-security"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _extra_certificates() -> dict[str, bytes]:
    if not EXTRA_CA_DIR.is_dir():
        return {}
    return {path.name: path.read_bytes() for path in sorted(EXTRA_CA_DIR.glob("*.crt"))}


def python_dockerfile(rootfs_tag: str) -> str:
    return environment().get_template("images/base.Dockerfile.j2").render(rootfs=rootfs_tag)


def recipe_tags() -> tuple[str, str]:
    """(rootfs tag, python base tag), each keyed by a hash of what goes into it."""
    rootfs = Settings.from_env().base_rootfs or (f"model-factory/debian:{SUITE}-"
                                                 + _hash(["debootstrap", "minbase", SUITE, apt_mirror()]))
    certificates = _extra_certificates()
    parts = [python_dockerfile(rootfs), UV_VERSION, *(f"{name}\0{data.hex()}" for name, data in certificates.items())]
    return rootfs, "model-factory/python-base:" + _hash(parts)


def _hash(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def ensure_base_image(progress: Progress = print) -> str:
    """The python base image's tag: the engine's own; else pulled from $FACTORY_BASE_CACHE when set;
    else built (and its Debian root with it), then pushed to that cache for the next engine."""
    if not engine_answers():
        # Checked first: without an engine, debootstrap would run for 90 s only for the import to fail.
        raise EngineError(f"no Docker engine answers at {docker_host() or 'the default socket'} (its API did "
                          "not answer /_ping), so the base image cannot be built; start one with `make engine` "
                          "(as root) or point DOCKER_HOST at a running engine")
    rootfs, base = recipe_tags()
    if _exists(base):
        return base
    cached = cache_reference(base)
    with tempfile.TemporaryDirectory(prefix="mf-base-") as work:
        log = Path(work) / "engine.log"
        if cached and _pulled(cached, base, progress, log):
            return base
        if not _exists(rootfs):
            _debian_root(rootfs, progress, log)
        context = Path(work) / "context"
        context.mkdir()
        _python_context(context)
        progress(f"building {base} (python3, venv, CA certificates, uv {UV_VERSION})")
        _engine(f"building the base image {base}", lambda: dockerapi.build(context, "Dockerfile", base, log))
        if cached:
            _push(base, cached, progress, log)
    return base


def cache_reference(base: str) -> str:
    """Where $FACTORY_BASE_CACHE keeps this recipe's base image ("" when no cache is set): its tag is the
    recipe's hash, so a changed recipe never pulls a stale base."""
    cache = Settings.from_env().base_cache
    return f"{cache}:{base.rpartition(':')[2]}" if cache else ""


def _pulled(cached: str, base: str, progress: Progress, log: Path) -> bool:
    """Every build job on GitLab has a fresh engine: one pull of the base replaces its apt-get and uv steps."""
    progress(f"pulling {cached} (FACTORY_BASE_CACHE) as {base}")
    try:
        dockerapi.pull(cached, log, registry_auth(cached))
        dockerapi.tag(cached, base)
    except dockerapi.StepFailed as exc:
        progress(f"{cached} could not be pulled ({exc.lines[-1] if exc.lines else exc}); building it")
        return False
    return True


def _push(base: str, cached: str, progress: Progress, log: Path) -> None:
    """A cache that cannot be written costs the next job a build, not this one its image: said, not raised."""
    try:
        dockerapi.tag(base, cached)
        dockerapi.push(cached, log, registry_auth(cached))
    except dockerapi.StepFailed as exc:
        progress(f"the base image was not cached at {cached} ({exc.lines[-1] if exc.lines else exc}); "
                 "the next build job builds it again")
        return
    progress(f"cached the base image at {cached}")


def _debian_root(rootfs: str, progress: Progress, log: Path) -> None:
    if Settings.from_env().base_rootfs:
        progress(f"pulling {rootfs} (FACTORY_BASE_ROOTFS) as the base image's Debian root")
        _engine(f"pulling {rootfs}", lambda: dockerapi.pull(rootfs, log))
    else:
        _import_rootfs(rootfs, progress, log)


def _exists(tag: str) -> bool:
    return _engine(f"inspecting {tag}", lambda: dockerapi.inspect(tag)) is not None


def _engine(what: str, step):
    try:
        return step()
    except dockerapi.StepFailed as exc:
        raise EngineError(f"{what} failed; the engine's last lines:\n" + "\n".join(exc.lines)) from exc


def _import_rootfs(tag: str, progress: Progress, log: Path) -> None:
    if not shutil.which("debootstrap"):
        raise EngineError(f"base image {tag} is missing and debootstrap is not installed; "
                          "run `make engine` as root (installs it)")
    root = ENGINE_HOME / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    mirror = apt_mirror()
    progress(f"debootstrap {SUITE} (minbase) from {mirror}: about 90 s, once per machine")
    _run(["debootstrap", "--variant=minbase", SUITE, str(root), mirror], "debootstrap of the base image")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(root / cache, ignore_errors=True)
        (root / cache).mkdir(parents=True, exist_ok=True)
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    chunks = iter(lambda: tar.stdout.read(1 << 20), b"")
    _engine(f"importing the Debian rootfs as {tag}",
            lambda: dockerapi.import_tar(chunks, tag, ['CMD ["/bin/bash"]'], log))
    tar.wait()
    shutil.rmtree(root, ignore_errors=True)


def _python_context(context: Path) -> None:
    (context / "Dockerfile").write_text(python_dockerfile(recipe_tags()[0]), encoding="utf-8")
    certs = context / "certs"
    certs.mkdir()
    for name, data in _extra_certificates().items():
        (certs / name).write_bytes(data)
    _uv_binary(context / "uv")


def _uv_binary(target: Path) -> None:
    shutil.copyfile(find_uv_bin(), target)
    target.chmod(0o755)


def _run(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=child_environment())
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise EngineError(f"{what} failed (`{command[0]} {command[1]}` exit {result.returncode}):\n{tail}")
    return result.stdout
