"""Container images: build on the project's base image, push, and pin by the digest the registry returns.

The engine is reached through its API (factory/dockerapi.py): a job needs Python and $DOCKER_HOST, no
`docker` CLI. Each step's output goes to one log per image; a failure names the step, shows the last
lines and the log path, and never carries a traceback.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import time
from pathlib import Path
from typing import Optional

from factory import archives, dockerapi, pipindex
from factory.errors import EngineError, FactoryError, ImageError
from factory.settings import Settings
from factory.state import PushedImage, StateDir, write_atomic

ROOT = Path(__file__).resolve().parent.parent
PROXY_TEMPLATE = "images/proxy.Dockerfile.j2"


def image_registry(catalog_registry: str) -> str:
    """Where images go: $FACTORY_IMAGE_REGISTRY (CI sets it to $CI_REGISTRY_IMAGE) or models.yaml's registry."""
    return Settings.from_env().image_registry or catalog_registry


def model_dockerfile(model: str, base: str, port: int) -> str:
    """Installing from the platform's package index when one is set (factory/pipindex.py): its URLs, never its
    credentials, are in the Dockerfile."""
    return _dockerfile("images/model.Dockerfile.j2", model=model, base=base, port=port)


def proxy_dockerfile(base: str) -> str:
    """The proxy's image, its requirements installed as a model's are (model_dockerfile)."""
    return _dockerfile(PROXY_TEMPLATE, base=base)


def _dockerfile(template: str, **context: object) -> str:
    from factory.render import environment  # render imports manifests, which imports this module

    settings = Settings.from_env()
    return environment().get_template(template).render(
        index_options=pipindex.uv_options(settings), netrc=f"{pipindex.NETRC_DIR}/netrc" if pipindex.netrc(settings)
        else "", secret_label=pipindex.SECRET_STAGE_LABEL, **context)


def model_context(bento_export: Path, context: Path, dockerfile: str) -> Path:
    """The exported Bento (service, env and its models) unpacked into `bento/`, beside what `_context` writes."""
    _context(context, dockerfile)
    with tarfile.open(bento_export, "r:*") as archive:
        archives.unpack(archive, context / "bento")
    return context


def proxy_context(context: Path, dockerfile: str) -> Path:
    """The proxy's sources and requirements in `proxy/`, beside what `_context` writes."""
    _context(context, dockerfile)
    shutil.copytree(ROOT / "proxy", context / "proxy", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return context


def _context(context: Path, dockerfile: str) -> None:
    """A fresh build context: the generated Dockerfile and the package index's netrc (when its URLs carry
    credentials) in a folder only the first stage copies."""
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    secret = pipindex.netrc(Settings.from_env())
    if secret:
        (context / pipindex.NETRC_DIR).mkdir(mode=0o700)
        netrc = context / pipindex.NETRC_DIR / "netrc"
        netrc.touch(mode=0o600)
        netrc.write_text(secret, encoding="utf-8")


def build_and_push(context: Path, dockerfile: str, tag: str, log: Path, what: str,
                   buildargs: Optional[dict[str, str]] = None) -> PushedImage:
    """Build `dockerfile` (relative to `context`) as `tag`, push it, and pin it by the digest the registry gave."""
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("", encoding="utf-8")
    started = time.monotonic()
    try:
        dockerapi.build(context, dockerfile, tag, log, buildargs)
        built = time.monotonic()
        dockerapi.push(tag, log, registry_auth(tag))
        pushed = time.monotonic()
        inspected = dockerapi.inspect(tag) or {}
    except dockerapi.StepFailed as exc:
        tail = "\n".join("    " + Settings.from_env().redact(line) for line in exc.lines)
        raise ImageError(f"{what}: the engine's {exc.step} failed; its last lines:\n{tail}\n  full log: {log}") from exc
    return PushedImage(tag=tag, reference=digest_reference(tag, inspected, log, what),
                       size_bytes=int(inspected.get("Size") or 0), build_seconds=round(built - started, 1),
                       push_seconds=round(pushed - built, 1), log=str(log))


def registry_auth(tag: str) -> Optional[dict[str, str]]:
    """GitLab's job credentials ($CI_REGISTRY_USER / $CI_REGISTRY_PASSWORD) for a push to $CI_REGISTRY;
    None elsewhere (the engine's own credentials, or none for a loopback registry)."""
    settings = Settings.from_env()
    if settings.ci_registry and tag.startswith(settings.ci_registry + "/") and settings.ci_registry_user:
        return {"username": settings.ci_registry_user, "password": settings.ci_registry_password or "",
                "serveraddress": settings.ci_registry}
    return None


def digest_reference(tag: str, inspected: dict, log: Path, what: str) -> str:
    digests = inspected.get("RepoDigests") or []
    repo = dockerapi.repository(tag)[0]
    for reference in digests:
        if reference.startswith(repo + "@sha256:"):
            return reference
    raise ImageError(f"{what}: the registry returned no digest for {tag} after the push (RepoDigests: "
                     f"{digests or 'none'}); full log: {log}")


def _forget_credentials(what: str) -> None:
    """Delete the build stage that saw the package index's netrc (passed or failed, its images stay as cache)."""
    if not pipindex.netrc(Settings.from_env()):
        return
    try:
        dockerapi.prune_labelled(pipindex.SECRET_STAGE_LABEL)
    except dockerapi.StepFailed as exc:
        raise ImageError(f"{what}: the build stage holding the package index's credentials was not deleted "
                         f"({Settings.from_env().redact(' '.join(exc.lines))}); delete it yourself: docker image "
                         f"prune --force --filter label={pipindex.SECRET_STAGE_LABEL}") from exc


def proxy_tag(registry: str) -> str:
    """Tagged by a hash of what goes into the image, so an unchanged proxy is not rebuilt under a new name."""
    digest = hashlib.sha256()
    sources = [path for path in sorted((ROOT / "proxy").glob("*")) if path.is_file() and path.suffix != ".pyc"]
    for path in [*sources, ROOT / "templates" / PROXY_TEMPLATE, ROOT / "templates" / "images" / "_venv.j2"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{registry}/proxy:{digest.hexdigest()[:16]}"


def build_proxy_image(registry: str, base: str, context: Path, log: Path) -> PushedImage:
    """The proxy's image, built in `context` (deleted after), on the same base image as the models."""
    return _built_in(proxy_context(context, proxy_dockerfile(base)), proxy_tag(registry), log, "proxy image")


def _built_in(context: Path, tag: str, log: Path, what: str) -> PushedImage:
    """Build and push the image of `context`; then delete the context and the stage that saw the credentials."""
    try:
        return build_and_push(context, "Dockerfile", tag, log, what)
    finally:
        shutil.rmtree(context, ignore_errors=True)
        _forget_credentials(what)


class ImageStep:
    """Whether this `factory build` makes images, and making them: each model's, and the proxy's."""

    def __init__(self, catalog, state, enabled: bool):
        from factory.engine import docker_host

        self.catalog, self.state = catalog, state
        self.registry = image_registry(catalog.kubernetes.image_registry)
        self.port = catalog.kubernetes.service_port
        reason = dockerapi.unreachable() if enabled else ""
        if not enabled:
            self.skipped = "--no-image given"
        elif reason:
            self.skipped = f"no Docker engine answers at {docker_host() or 'the default socket'} ({reason})"
        else:
            self.skipped = ""
        self._base = ""

    def base(self) -> str:
        from factory.baseimage import ensure_base_image

        if not self._base:
            try:
                self._base = ensure_base_image(progress=lambda line: None)
            except EngineError as exc:
                raise ImageError(f"the base image could not be built: {exc}") from exc
        return self._base

    def unbuilt(self, model, bento_tag: str, writes: StateDir) -> dict:
        """The record's image fields before any image exists, with the Dockerfile CI would build (written
        where `writes` stages the build, recorded where the build lands)."""
        from factory.baseimage import recipe_tags

        write_atomic(writes.dockerfile_path(model.name), model_dockerfile(model.name, recipe_tags()[1], self.port))
        return {"image": self.tag(model, bento_tag), "image_ref": "", "image_size_bytes": 0,
                "image_build_seconds": 0.0, "dockerfile": str(self.state.dockerfile_path(model.name))}

    def tag(self, model, bento_tag: str) -> str:
        return f"{self.registry}/{model.k8s_name}:{bento_tag.split(':', 1)[1]}"

    def build(self, model, record) -> dict:
        # Named from this run's registry: a Bento recorded by `--no-image` (or under another
        # FACTORY_IMAGE_REGISTRY) and unchanged since is pushed where this build was asked to push.
        image = self.tag(model, record.bento_tag)
        what = f"{self.catalog.where(model.name)}: image {image}"
        context = model_context(Path(record.bento_export), self.state.image_context(model.name),
                                model_dockerfile(model.name, self.base(), self.port))
        pushed = _built_in(context, image, self.state.image_log(model.name), what)
        return {"image": image, "image_ref": pushed.reference, "image_size_bytes": pushed.size_bytes,
                "image_build_seconds": pushed.build_seconds}

    def proxy(self, progress) -> str:
        """Build and push the proxy image; "" on success (or when images are skipped), else the error."""
        if self.skipped:
            return ""
        try:
            pushed = build_proxy_image(self.registry, self.base(), self.state.image_context("proxy"),
                                       self.state.image_log("proxy"))
        except FactoryError as exc:
            return str(exc)
        pushed.save(self.state.proxy_image_path())
        progress(f"proxy: image {pushed.reference} ({pushed.size_bytes / 2**20:.0f} MiB)")
        return ""


def proxy_image_ref(state: StateDir) -> str:
    """The pushed proxy image by digest, or "" when `factory build --proxy` has not pushed one."""
    pushed = state.proxy_image()
    return pushed.reference if pushed else ""
