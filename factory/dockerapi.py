"""The Docker engine through its HTTP API (the `docker` SDK): images need no `docker` CLI, only an engine.

The engine is found as the Docker CLI finds it: $DOCKER_HOST, plus DOCKER_TLS_VERIFY and DOCKER_CERT_PATH for
an engine behind TLS (GitLab's Docker-in-Docker service). Builds use the engine's classic builder (what the
build API runs unless asked for BuildKit), so no buildx is needed. Every step streams the engine's output
into one log; a failed step raises StepFailed with its last lines, never a third-party traceback.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Optional

from factory.errors import FactoryError

PROBE_TIMEOUT_S = 10.0
# Read timeout of a step: a `RUN uv pip install --quiet` can stay silent for minutes.
STEP_TIMEOUT_S = 3600.0
TAIL_LINES = 12
# On every container the factory runs: the pid of the factory process that started it.
PID_LABEL = "model-factory.pid"


class StepFailed(FactoryError):
    """An engine step (build, push, pull, import, inspect) failed; `lines` are the last lines it wrote."""

    def __init__(self, step: str, lines: list[str]):
        super().__init__(f"the engine's {step} failed")
        self.step, self.lines = step, lines[-TAIL_LINES:]


def _client(timeout_s: float = STEP_TIMEOUT_S):
    import docker

    return docker.from_env(timeout=timeout_s)


def _failures() -> tuple[type[BaseException], ...]:
    import docker
    import requests

    # ValueError: an answer that is not the JSON the SDK expects (an engine or proxy speaking something else).
    return docker.errors.DockerException, requests.RequestException, OSError, ValueError


def answers(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """The engine answers its API (`/_ping`, after the client negotiated the API version)."""
    return not unreachable(timeout_s)


def unreachable(timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Why the engine does not answer, in one line (e.g. a TLS client certificate missing from
    DOCKER_CERT_PATH: a GitLab runner that does not share /certs/client); "" when it answers."""
    import docker

    try:
        return "" if _client(timeout_s).ping() else "its API did not answer /_ping"
    except docker.errors.TLSParameterError:
        return ("no TLS client certificate (cert.pem, key.pem, ca.pem) in DOCKER_CERT_PATH; on GitLab the runner must "
                "share /certs/client with the Docker-in-Docker service (README \"What the GitLab runner needs\")")
    except _failures() as exc:
        return " ".join(str(exc).split())[:300] or type(exc).__name__


def repository(tag: str) -> tuple[str, Optional[str]]:
    """`host:5000/a/b:tag` → (`host:5000/a/b`, `tag`); a colon before the last `/` belongs to the host."""
    name, _, suffix = tag.rpartition(":")
    return (name, suffix) if name and "/" not in suffix else (tag, None)


def build(context: Path, dockerfile: str, tag: str, log: Path, buildargs: Optional[dict[str, str]] = None,
          nocache: bool = False) -> None:
    """`docker build --network host -f DOCKERFILE -t TAG CONTEXT`, the context as `context_archive` sends it;
    `nocache`: `--no-cache`, every step run again (bench.images times a cold build with it)."""
    args = " ".join([*(f"--build-arg {key}={value}" for key, value in sorted((buildargs or {}).items())),
                     *(["--no-cache"] if nocache else [])])
    with context_archive(context) as archive:
        _run("build", log, f"build --network host -f {dockerfile} -t {tag} {args} {context}".replace("  ", " "),
             lambda api: api.build(fileobj=archive, custom_context=True, dockerfile=dockerfile, tag=tag,
                                   buildargs=buildargs or {}, network_mode="host", rm=True, forcerm=True, decode=True,
                                   nocache=nocache))


def context_archive(context: Path) -> IO[bytes]:
    """The build context (a folder the factory wrote, no .dockerignore) as a tar whose every entry any user may
    read: files 0644 (0755 when their owner may run them), folders 0755, owned by root. `COPY` keeps a context
    file's mode, and a checkout or state folder made under umask 077 holds 0600 files: copied as they are, the
    image's user (uid 1034) could not read its own code. Modes in an image protect no secret (whoever has the image
    reads every layer), and the same sources now give the same layers whatever the umask."""
    archive = tempfile.TemporaryFile()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for child in sorted(context.iterdir()):
            tar.add(child, arcname=child.name, filter=_readable)
    archive.seek(0)
    return archive


def _readable(entry: tarfile.TarInfo) -> tarfile.TarInfo:
    entry.mode = 0o755 if entry.isdir() or entry.mode & 0o100 else 0o644
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = ""
    return entry


def remove(tag: str) -> None:
    """`docker image rm TAG` (the tag; layers other tags use stay); a tag already gone is fine."""
    import docker

    try:
        _client(PROBE_TIMEOUT_S).api.remove_image(tag)
    except docker.errors.ImageNotFound:
        return
    except _failures() as exc:
        raise StepFailed("image removal", [f"removing {tag}: {exc}"]) from exc


def prune_labelled(label: str) -> None:
    """`docker image prune --force --filter label=LABEL`: untagged images carrying the label, with their untagged
    parents (a build's intermediate images; a tagged image is never pruned)."""
    try:
        _client(PROBE_TIMEOUT_S).api.prune_images(filters={"dangling": True, "label": label})
    except _failures() as exc:
        raise StepFailed("image prune", [f"pruning images labelled {label}: {exc}"]) from exc


def push(tag: str, log: Path, auth: Optional[dict[str, str]] = None) -> None:
    name, version = repository(tag)
    _run("push", log, f"push {tag}",
         lambda api: api.push(name, tag=version, stream=True, decode=True, auth_config=auth))


def pull(reference: str, log: Path, auth: Optional[dict[str, str]] = None) -> None:
    _run("pull", log, f"pull {reference}",
         lambda api: api.pull(reference, stream=True, decode=True, auth_config=auth))


def tag(source: str, target: str) -> None:
    """`docker tag SOURCE TARGET`."""
    name, version = repository(target)
    try:
        _client(PROBE_TIMEOUT_S).api.tag(source, name, version)
    except _failures() as exc:
        raise StepFailed("tag", [f"tagging {source} as {target}: {exc}"]) from exc


def import_tar(chunks: Iterable[bytes], tag: str, changes: list[str], log: Path) -> None:
    """`docker import -c CHANGE - TAG` from a stream of tar bytes."""
    name, version = repository(tag)
    _run("import", log, f"import -c {' -c '.join(changes)} - {tag}",
         lambda api: _json_lines(api.import_image(src=chunks, repository=name, tag=version, changes=changes,
                                                  stream_src=True)))


def run(image: str, command: list[str], memory_bytes: int, volumes: Optional[dict] = None,
        cpu_quota: Optional[tuple[int, int]] = None) -> Any:
    """`docker run -d --network host --memory M --memory-swap M [--cpu-period P --cpu-quota Q] [-v …] --label
    model-factory.pid=PID IMAGE COMMAND`, pulling a missing image; the container object (the SDK's) is the caller's
    to stop and remove. The label names this process: the containers a killed `factory up` or `factory test` left
    running are `docker ps --filter label=model-factory.pid=PID`."""
    period, quota = cpu_quota or (None, None)
    try:
        return _client().containers.run(image, command=command, detach=True, network_mode="host",
                                        mem_limit=memory_bytes, memswap_limit=memory_bytes, volumes=volumes or {},
                                        cpu_period=period, cpu_quota=quota, labels={PID_LABEL: str(os.getpid())})
    except _failures() as exc:
        cause = getattr(exc, "explanation", None) or str(exc)  # the engine's own words, not the SDK's URL
        raise StepFailed("run", [f"the image {image} did not start: {' '.join(cause.split())[:400]}"]) from exc


def cpus() -> int:
    """The engine's CPU count (its machine's, not necessarily this one's)."""
    try:
        return int(_client(PROBE_TIMEOUT_S).info()["NCPU"])
    except (*_failures(), KeyError, TypeError) as exc:
        raise StepFailed("info", [f"the engine did not say how many CPUs it has: {exc}"]) from exc


def gone(reference: str) -> bool:
    """The image's registry answers that it has no such manifest (wiped, garbage-collected). A registry that
    cannot be asked is not taken for one that lost it: pulling from it will say what is wrong."""
    import docker

    try:
        _client(PROBE_TIMEOUT_S).api.inspect_distribution(reference)
    except docker.errors.NotFound:
        return True
    except _failures():
        return False
    return False


def inspect(tag: str) -> Optional[dict[str, Any]]:
    """The engine's record of an image (RepoDigests, Size, …), or None when it has no such image."""
    import docker

    try:
        return _client(PROBE_TIMEOUT_S).api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return None
    except _failures() as exc:
        raise StepFailed("inspect", [f"inspecting {tag}: {exc}"]) from exc


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def _run(step: str, log: Path, command: str, call) -> None:
    """Run one streaming API call, its output appended to `log`; an error in the stream or from the call raises."""
    written: list[str] = []
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"$ docker {command}\n")

        def record(text: str) -> None:
            if not text.strip():
                return
            sink.write(text if text.endswith("\n") else text + "\n")
            written.extend(line for line in text.splitlines() if line.strip())

        try:
            for chunk in call(_client().api):
                if "error" in chunk or "errorDetail" in chunk:
                    record(chunk.get("error") or chunk["errorDetail"].get("message", str(chunk)))
                    raise StepFailed(step, written)
                if not chunk.get("progressDetail"):  # byte counters of one layer: the CLI's progress bars
                    record(_chunk_text(chunk))
        except _failures() as exc:
            record(f"{type(exc).__name__}: {exc}")
            raise StepFailed(step, written) from exc


def _chunk_text(chunk: dict) -> str:
    """A progress message as the CLI prints it: `stream` text of builds, `status` (+ `id`) of pushes and pulls."""
    if "stream" in chunk:
        return chunk["stream"]
    status = chunk.get("status", "")
    return f"{chunk['id']}: {status}" if chunk.get("id") and status else status or json.dumps(chunk, sort_keys=True)
