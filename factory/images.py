"""Container images: build on the project's base image, push, and pin by the digest the registry returns.

The `docker` CLI on PATH talks to $DOCKER_HOST with the classic builder (`DOCKER_BUILDKIT=0`): it works
with every client whether or not buildx is installed. Each step's output goes to one log per image;
a failure names the step, shows the last lines and the log path, and never carries a traceback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Sequence

from factory.errors import EngineError, FactoryError, ImageError
from factory.settings import Settings
from factory.state import PushedImage, StateDir

TAIL_LINES = 12
ROOT = Path(__file__).resolve().parent.parent


def image_registry(catalog_registry: str) -> str:
    """Where images go: $FACTORY_IMAGE_REGISTRY (CI sets it to $CI_REGISTRY_IMAGE) or models.yaml's registry."""
    return Settings.from_env().image_registry or catalog_registry


def model_dockerfile(model: str, base: str, port: int) -> str:
    from factory.render import environment  # render imports manifests, which imports this module

    return environment().get_template("images/model.Dockerfile.j2").render(model=model, base=base, port=port)


def model_context(bento_export: Path, context: Path, dockerfile: str) -> Path:
    """The exported Bento (service, env and its models) unpacked, with the generated Dockerfile beside it."""
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    with tarfile.open(bento_export, "r:*") as archive:
        archive.extractall(context, filter="data")
    (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    return context


def build_and_push(context: Path, dockerfile: Path, tag: str, log: Path, what: str,
                   build_args: Sequence[str] = ()) -> PushedImage:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("", encoding="utf-8")
    started = time.monotonic()
    args = [f"--build-arg={arg}" for arg in build_args]
    _step(["build", "--network", "host", "-f", str(dockerfile), "-t", tag, *args, str(context)], log, what)
    built = time.monotonic()
    _step(["push", tag], log, what)
    pushed = time.monotonic()
    reference = digest_reference(tag, log, what)
    size = int(_step(["image", "inspect", "--format", "{{.Size}}", tag], log, what).strip() or 0)
    return PushedImage(tag=tag, reference=reference, size_bytes=size, build_seconds=round(built - started, 1),
                       push_seconds=round(pushed - built, 1), log=str(log))


def repository(tag: str) -> str:
    """`host:5000/a/b:tag` → `host:5000/a/b` (a colon before the last `/` belongs to the host)."""
    name, _, suffix = tag.rpartition(":")
    return name if name and "/" not in suffix else tag


def digest_reference(tag: str, log: Path, what: str) -> str:
    digests = _step(["image", "inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", tag], log, what)
    repo = repository(tag)
    for line in digests.split():
        if line.startswith(repo + "@sha256:"):
            return line
    raise ImageError(f"{what}: the registry returned no digest for {tag} after the push (RepoDigests: "
                     f"{digests.split() or 'none'}); full log: {log}")


def _step(args: list[str], log: Path, what: str) -> str:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"$ docker {' '.join(args)}\n")
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, env=env)
    except OSError as exc:
        raise ImageError(f"{what}: could not run `docker {args[0]}`: {exc}; full log: {log}") from exc
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join("    " + line for line in (result.stdout + result.stderr).splitlines()[-TAIL_LINES:])
        raise ImageError(f"{what}: `docker {' '.join(args[:1])}` failed (exit {result.returncode}); its last lines:\n"
                         f"{tail}\n  full log: {log}")
    return result.stdout


def proxy_tag(registry: str) -> str:
    """Tagged by a hash of what goes into the image, so an unchanged proxy is not rebuilt under a new name."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "proxy").glob("*")):
        if path.is_file() and path.suffix != ".pyc":
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{registry}/proxy:{digest.hexdigest()[:16]}"


def build_proxy_image(registry: str, base: str, log: Path) -> PushedImage:
    """proxy/Dockerfile from the repository root, on the same base image as the models."""
    return build_and_push(ROOT, ROOT / "proxy" / "Dockerfile", proxy_tag(registry), log, "proxy image",
                          build_args=[f"BASE_IMAGE={base}"])


class ImageStep:
    """Whether this `factory build` makes images, and making them: each model's, and the proxy's."""

    def __init__(self, catalog, state, enabled: bool):
        from factory.engine import docker_host, engine_answers

        self.catalog, self.state = catalog, state
        self.registry = image_registry(catalog.kubernetes.image_registry)
        self.port = catalog.kubernetes.service_port
        if not enabled:
            self.skipped = "--no-image given"
        elif not engine_answers():
            self.skipped = f"no Docker engine answers at {docker_host() or 'the default socket'}"
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

    def unbuilt(self, model, bento_tag: str) -> dict:
        """The record's image fields before any image exists, with the Dockerfile CI would build."""
        from factory.baseimage import recipe_tags

        dockerfile = self.state.dockerfile_path(model.name)
        dockerfile.parent.mkdir(parents=True, exist_ok=True)
        dockerfile.write_text(model_dockerfile(model.name, recipe_tags()[1], self.port), encoding="utf-8")
        return {"image": f"{self.registry}/{model.k8s_name}:{bento_tag.split(':', 1)[1]}", "image_ref": "",
                "image_size_bytes": 0, "image_build_seconds": 0.0, "dockerfile": str(dockerfile)}

    def build(self, model, record) -> dict:
        what = f"{self.catalog.where(model.name)}: image {record.image}"
        context = model_context(Path(record.bento_export), self.state.image_context(model.name),
                                model_dockerfile(model.name, self.base(), self.port))
        try:
            pushed = build_and_push(context, context / "Dockerfile", record.image, self.state.image_log(model.name),
                                    what)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        return {"image_ref": pushed.reference, "image_size_bytes": pushed.size_bytes,
                "image_build_seconds": pushed.build_seconds}

    def proxy(self, progress) -> str:
        """Build and push the proxy image; "" on success (or when images are skipped), else the error."""
        if self.skipped:
            return ""
        try:
            pushed = build_proxy_image(self.registry, self.base(), self.state.image_log("proxy"))
        except FactoryError as exc:
            return str(exc)
        pushed.save(self.state.proxy_image_path())
        progress(f"proxy: image {pushed.reference} ({pushed.size_bytes / 2**20:.0f} MiB)")
        return ""


def proxy_image_ref(state: StateDir) -> str:
    """The pushed proxy image by digest, or "" when `factory build --proxy` has not pushed one."""
    pushed = state.proxy_image()
    return pushed.reference if pushed else ""
