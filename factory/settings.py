"""Every environment variable the factory reads, in one typed object (README, "Environment variables").

Modules take their configuration from `Settings.from_env()` rather than reading `os.environ` themselves,
so the full list of knobs lives here and nowhere else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from factory.errors import SettingsError

STATE_DEFAULT = "factory-state"
PIP_INDEX_URL_ENV = "FACTORY_PIP_INDEX_URL"
PIP_EXTRA_INDEX_URL_ENV = "FACTORY_PIP_EXTRA_INDEX_URL"
PINNED_VERSIONS_ENV = "FACTORY_PINNED_VERSIONS"  # not hidden: BentoML refuses to build from hidden paths
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _env(name: str, help: str):
    return field(metadata={"env": name, "help": help})


@dataclass(frozen=True)
class Settings:
    state_dir: Path = _env("FACTORY_STATE", "where build records, reports and sized manifests go "
                                            "(default `./factory-state`)")
    tracking_uri: Optional[str] = _env("MLFLOW_TRACKING_URI", "an MLflow tracking server; unset, the project's "
                                                              "embedded `registry/mlflow.db` in the working "
                                                              "directory (`make registry` creates it), "
                                                              "wherever `-f` points")
    runtime_python: Optional[Path] = _env("FACTORY_RUNTIME_PYTHON", "serve Bentos with this interpreter "
                                                                    "instead of the managed runtime venv")
    runtime_home: Optional[Path] = _env("FACTORY_RUNTIME_HOME", "where the managed runtime venvs live "
                                                                "(default `<state>/runtime`)")
    proxy_image: Optional[str] = _env("FACTORY_PROXY_IMAGE", "the proxy's image in its Deployment (default: "
                                                             "the one `factory build --proxy` pushed, by digest)")
    image_registry: Optional[str] = _env("FACTORY_IMAGE_REGISTRY", "where images are pushed, instead of models.yaml's "
                                                                   "kubernetes.image_registry (CI: $CI_REGISTRY_IMAGE)")
    docker_host: Optional[str] = _env("DOCKER_HOST", "the Docker engine images are built and run with (the "
                                                     "Makefile sets it: the default socket, else the project's)")
    pinned_versions: str = _env(PINNED_VERSIONS_ENV, "alias models at a fixed registry version, as "
                                                     "`name=version ...` (set by a sharded child pipeline: "
                                                     "its render job resolved them)")
    base_rootfs: Optional[str] = _env("FACTORY_BASE_ROOTFS", "a public image to pull as the base image's Debian "
                                                             "root instead of debootstrapping one (the GitLab "
                                                             "build jobs set it from pipeline.base_rootfs)")
    base_cache: Optional[str] = _env("FACTORY_BASE_CACHE", "a registry repository the Python base image is pulled "
                                                           "from when the engine lacks it, and pushed to once "
                                                           "built (the GitLab build jobs set "
                                                           "$CI_REGISTRY_IMAGE/model-factory/python-base)")
    ci_registry: Optional[str] = _env("CI_REGISTRY", "GitLab's container registry: image pushes to it authenticate "
                                                     "with the two below (predefined in jobs)")
    ci_registry_user: Optional[str] = _env("CI_REGISTRY_USER", "the user image pushes to CI_REGISTRY authenticate as "
                                                               "(predefined in jobs)")
    ci_registry_password: Optional[str] = _env("CI_REGISTRY_PASSWORD", "CI_REGISTRY_USER's password, the job's "
                                                                       "token (predefined in jobs)")
    torch_cpu_index: str = _env("FACTORY_TORCH_CPU_INDEX", "the package index PyTorch's CPU builds (`torch==X+cpu`) "
                                                           "come from for models without `resources.gpu` (default "
                                                           f"{TORCH_CPU_INDEX}; a mirror of it where that is "
                                                           "unreachable)")
    pip_index_url: Optional[str] = _env(
        PIP_INDEX_URL_ENV, "the package index every serving venv's and every image's `uv pip install` use instead "
                           "of PyPI (a PEP 503 `simple` URL: an Artifactory or Nexus proxy of PyPI); credentials "
                           "in it (`https://user:token@host/...`, masked CI/CD variable) never reach an image, "
                           "Bento, record or log line")
    pip_extra_index_url: Optional[str] = _env(
        PIP_EXTRA_INDEX_URL_ENV, "one more package index searched besides that one (or PyPI): the platform's own "
                                 "packages; credentials kept out as for FACTORY_PIP_INDEX_URL")
    registry_uri: Optional[str] = _env("MLFLOW_REGISTRY_URI", "the MLflow model registry, when it is not the tracking "
                                                              "server (MLflow's precedence: this, else "
                                                              "MLFLOW_TRACKING_URI); needs MLFLOW_TRACKING_URI set too")
    tracking_username: Optional[str] = _env("MLFLOW_TRACKING_USERNAME", "with MLFLOW_TRACKING_PASSWORD: basic auth to "
                                                                        "the tracking server and registry (MLflow's "
                                                                        "`--app-name basic-auth`)")
    tracking_password: Optional[str] = _env("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME's password (masked "
                                                                        "CI/CD variable); like every registry "
                                                                        "credential, kept from the processes the "
                                                                        "factory starts, and from images, Bentos, "
                                                                        "records and logs")
    tracking_token: Optional[str] = _env("MLFLOW_TRACKING_TOKEN", "a bearer token for the tracking server and "
                                                                  "registry, instead of a username and password "
                                                                  "(masked CI/CD variable)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """The settings, checked: a value the factory cannot use is one SettingsError naming the variable."""
        values = {f.name: environ.get(f.metadata["env"]) or None for f in fields(cls)}
        paths = {name: Path(values[name]) for name in ("runtime_python", "runtime_home") if values[name]}
        _check_values(values, {f.name: f.metadata["env"] for f in fields(cls)})
        return cls(**{**values, **paths, "state_dir": Path(values["state_dir"] or STATE_DEFAULT).resolve(),
                      "pinned_versions": values["pinned_versions"] or "",
                      "torch_cpu_index": _torch_cpu_index(values["torch_cpu_index"] or TORCH_CPU_INDEX),
                      **_package_indexes(values["pip_index_url"], values["pip_extra_index_url"])})

    def secrets(self) -> list[str]:
        """Credential strings a message must never show, longest first (a password inside its userinfo)."""
        found = [secret for url in (self.pip_index_url, self.pip_extra_index_url, self.tracking_uri, self.registry_uri)
                 if url for secret in _url_secrets(url)]
        found += [secret for secret in (self.tracking_password, self.tracking_token) if secret and len(secret) >= 4]
        return sorted(set(found), key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every credential of a URL (any `scheme://user:password@`) and every secret setting hidden."""
        text = _USERINFO.sub(r"\1***@", text)
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return text


TRACKING_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# What only the factory's own process needs, to read the registry and its artifact store. The processes it starts
# (bentoml, uv, the golden script, served models, the engine) read local files: they never get these.
CREDENTIAL_VARIABLES = frozenset({
    *TRACKING_CREDENTIALS, "MLFLOW_TRACKING_CLIENT_CERT_PATH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY", "AZURE_CLIENT_SECRET",
    "GOOGLE_APPLICATION_CREDENTIALS", "DATABRICKS_TOKEN", "DATABRICKS_CLIENT_SECRET"})
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def child_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`environ` without the registry's and artifact store's credentials, and its URIs without userinfo."""
    kept = {name: value for name, value in environ.items() if name not in CREDENTIAL_VARIABLES}
    for name in URI_VARIABLES:
        if name in kept:
            kept[name] = public_url(kept[name])
    return kept


# A package index URL reaches a Dockerfile's RUN line and uv's environment: only characters no shell or
# requirements parser treats specially (a credential's other characters are percent-encoded).
_INDEX_URL = re.compile(r"https?://[A-Za-z0-9._~:/@%+=,-]+")
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
INDEX_FIX = ("set it to one http(s):// URL of a PEP 503 `simple` index, nothing else (no spaces, quotes, `?`, `#` or "
             "`;`), with any credential as `user:token@` before the host and its other characters percent-encoded")


def redact_text(text: str) -> str:
    """`Settings.redact` where the environment itself may be what is wrong (the CLI's last word on any line)."""
    try:
        return Settings.from_env().redact(text)
    except SettingsError:
        return _USERINFO.sub(r"\1***@", text)


def public_url(url: str) -> str:
    """The URL without its credentials: what a Dockerfile, record or message may show."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url  # as given: urlunsplit would turn sqlite:////abs into sqlite://abs
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def package_index(name: str, url: Optional[str]) -> Optional[str]:
    """A FACTORY_PIP_*INDEX_URL, checked; its credentials, when any, are never echoed."""
    if url is None:
        return None
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    # Everything before the authority's last `@` is a credential, however malformed.
    host = "***@" + authority.rpartition("@")[2] if "@" in authority else authority
    shown = scheme + separator + host + slash + path
    if not _INDEX_URL.fullmatch(url) or url.count("@") > 1:
        raise SettingsError(f"{name}: {shown!r} is not a package index URL; {INDEX_FIX}")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise SettingsError(f"{name}: {shown!r} has a port that is not a number; {INDEX_FIX}") from None
    if not parts.hostname:
        raise SettingsError(f"{name}: {shown!r} names no host; {INDEX_FIX}")
    if "@" in parts.netloc and (parts.username is None or not parts.password
                       or re.search(r"\s", unquote(parts.username) + unquote(parts.password))):
        raise SettingsError(f"{name}: {shown!r}: a credential must be `user:token@` (both parts, no spaces once "
                            f"percent-decoded); {INDEX_FIX}")
    return url


def _package_indexes(index: Optional[str], extra: Optional[str]) -> dict[str, Optional[str]]:
    """Both indexes, checked; a netrc holds one credential per host, so two for one host cannot both be used."""
    checked = {"pip_index_url": package_index(PIP_INDEX_URL_ENV, index),
               "pip_extra_index_url": package_index(PIP_EXTRA_INDEX_URL_ENV, extra)}
    found = [index_credentials(url) for url in checked.values() if url]
    if len(found) == 2 and None not in found and found[0][0] == found[1][0] and found[0] != found[1]:
        raise SettingsError(f"{PIP_EXTRA_INDEX_URL_ENV}: its credential for {found[0][0]} differs from "
                            f"{PIP_INDEX_URL_ENV}'s; an image build passes one credential per host: use one "
                            "credential that reads both, or leave it out of one URL")
    return checked


def index_credentials(url: str) -> Optional[tuple[str, str, str]]:
    """(host, user, password), percent-decoded, or None for a URL without credentials."""
    parts = urlsplit(url)
    if parts.password is None:
        return None
    return parts.hostname, unquote(parts.username), unquote(parts.password)


def _url_secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    if parts.password is None:
        return []
    userinfo = parts.netloc.rpartition("@")[0]
    return [userinfo, parts.password, unquote(parts.password)]


def _check_values(values: dict[str, Optional[str]], variables: dict[str, str]) -> None:
    """Values that would reach an HTTP client, the file system, the engine or a manifest unusable or unsafe."""
    from factory.catalog import CI_IMAGE_PATTERN, IMAGE_REGISTRY_PATTERN  # pydantic: not for `factory --help`

    for name in ("tracking_uri", "registry_uri"):
        uri = values[name]
        if uri and re.search(r"[\s\x00-\x1f\x7f]", uri):
            raise SettingsError(f"{variables[name]}: {ascii(public_url(uri)[:80])} holds a space or control character; "
                                "set it to one URI such as http://mlflow:5000 or sqlite:////abs/mlflow.db (a space in a "
                                "path written %20)")
    state = Path(values["state_dir"] or STATE_DEFAULT)
    if state.exists() and not state.is_dir():
        raise SettingsError(f"FACTORY_STATE: {state} is a file, not a directory; point it at a directory (it is "
                            "created if missing)")
    # They become image references the engine is asked for and a Deployment's `image:`: checked as models.yaml's are.
    images = {"image_registry": (IMAGE_REGISTRY_PATTERN, "an image repository prefix such as registry.example.com/team"),
              "base_cache": (IMAGE_REGISTRY_PATTERN, "an image repository such as registry.example.com/team/python-base"),
              "proxy_image": (CI_IMAGE_PATTERN, "an image reference such as registry.example.com/team/proxy:1.2 (or "
                                                "@sha256:...)"),
              "base_rootfs": (CI_IMAGE_PATTERN, "an image reference such as debian:bookworm-20251229-slim")}
    for name, (pattern, what) in images.items():
        value = values[name]
        if value is not None and not re.fullmatch(pattern, value):
            shown = ascii(value) if len(value) <= 80 else ascii(value[:77]) + "..."
            raise SettingsError(f"{variables[name]}: {shown} is not {what} (lowercase letters, digits and . _ - / :); "
                                "set it to one, or unset it")


def _torch_cpu_index(index: str) -> str:
    """It becomes a line of every CPU PyTorch model's requirements.txt: one URL, no option or line break."""
    if not re.fullmatch(r"(?:https?|file)://[^\s#;]+", index):
        raise SettingsError(f"FACTORY_TORCH_CPU_INDEX: {index!r} is not a package index URL; set it to the "
                            "http(s):// address of PyTorch's CPU index or a mirror of it (a PEP 503 `simple` page), "
                            f"or unset it for {TORCH_CPU_INDEX}")
    return index


# Read by click as option defaults (cli.py uses these names), listed here so one module names every variable.
FUZZ_EXAMPLES_ENV = "FACTORY_FUZZ_EXAMPLES"
LOAD_SECONDS_ENV = "FACTORY_LOAD_SECONDS"
KEPT_VERSIONS_ENV = "FACTORY_KEPT_VERSIONS"
API_TOKEN_ENV = "FACTORY_API_TOKEN"
# GitLab's own predefined variables, read by `factory fetch-artifacts` (the child pipeline's jobs).
GITLAB_VARIABLES = {"CI_API_V4_URL": "`factory fetch-artifacts --api`: GitLab's REST API (predefined in jobs)",
                    "CI_PROJECT_ID": "`factory fetch-artifacts --project` (predefined in jobs)",
                    "CI_PIPELINE_ID": "`factory fetch-artifacts --pipeline`: the pipeline whose jobs' artifacts are "
                                      "fetched (predefined in jobs)",
                    "CI_JOB_TOKEN": "`factory fetch-artifacts`: the job's token, tried when FACTORY_API_TOKEN is unset "
                                    "(predefined in jobs; GitLab refuses it a pipeline's jobs list on every tier)"}
CLI_VARIABLES = {FUZZ_EXAMPLES_ENV: "`factory test --examples`: valid requests to generate per model",
                 LOAD_SECONDS_ENV: "`factory test --load-seconds`: length of the load phase (the capacity search)",
                 KEPT_VERSIONS_ENV: "`factory record-deploy --kept`: alias models a pipeline kept (set by the "
                                    "generated child pipeline)",
                 API_TOKEN_ENV: "`factory fetch-artifacts`: a `read_api` token (masked CI/CD variable) for the "
                                "jobs and job artifacts APIs; without it jobs regenerate their inputs",
                 **GITLAB_VARIABLES}


def documentation() -> dict[str, str]:
    """Variable name → what it does: the README's table is checked against this."""
    documented = {f.metadata["env"]: f.metadata["help"] for f in fields(Settings)}
    return dict(sorted({**documented, **CLI_VARIABLES}.items()))
