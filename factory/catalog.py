"""Pydantic models of models.yaml, after defaults and matrix entries have been expanded.

Every user string that later reaches a shell line, a YAML document, a URL path or a Kubernetes
name is held to a small ASCII character set here, so templates never need to escape anything.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, model_validator
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"[A-Za-z](?:[A-Za-z0-9_]{0,61}[A-Za-z0-9])?"
SEGMENT_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})"
REGISTRY_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
ALIAS_PATTERN = r"[A-Za-z][A-Za-z0-9_-]{0,63}"
CPU_PATTERN = r"(?:[0-9]+m|[0-9]+(?:\.[0-9]{1,3})?)"
MEMORY_PATTERN = r"[0-9]+(?:Ki|Mi|Gi|Ti|k|M|G|T)?"
GPU_TYPE_PATTERN = r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?"
HEADER_PATTERN = r"[A-Za-z0-9][A-Za-z0-9-]{0,63}"
FIELD_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
NAMESPACE_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
SECRET_NAME_PATTERN = r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?"
_SPECIFIER = r"(?:==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!_-]+"
_EXTRAS = r"\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\]"
REQUIREMENT_PATTERN = rf"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:{_EXTRAS})?(?:{_SPECIFIER}(?:,{_SPECIFIER})*)?"
RUNNER_TAG_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})"
CI_IMAGE_PATTERN = r"[a-z0-9](?:[a-z0-9._/:-]{0,254})(?:@sha256:[0-9a-f]{64})?"
IMAGE_REGISTRY_PATTERN = r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?(?:/[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?)*"


def shown(value: Any) -> str:
    """How a user value is echoed in an error: YAML-like, with control and non-ASCII characters escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        text = ascii(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    if isinstance(value, (dict, list)):
        return ("a" if value else "an empty") + (" mapping" if isinstance(value, dict) else " list")
    return str(value)


VERSION_OR_ALIAS = "version_or_alias"
VERSION_OR_ALIAS_MESSAGE = "set exactly one of `version` (e.g. 3) or `alias` (e.g. champion)"

def _checked(pattern: str, what: str, kind: str = "unsafe_value"):
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise PydanticCustomError(kind, f"must be a string (got {shown(value)})")
        text = str(value)
        if not compiled.fullmatch(text):
            raise PydanticCustomError(kind, f"{what}; got {shown(value)}")
        return text

    return BeforeValidator(check)


Name = Annotated[str, _checked(NAME_PATTERN, "must start with a letter, end with a letter or digit and contain "
                                             "only ASCII letters, digits and '_' (at most 63 characters)")]
Segment = Annotated[str, _checked(SEGMENT_PATTERN, "must start with a letter or digit and contain only ASCII "
                                                   "letters, digits, '.', '_' and '-' (at most 63 characters)")]
RegistryName = Annotated[str, _checked(REGISTRY_NAME_PATTERN, "must contain only ASCII letters, digits, '.', "
                                                              "'_' and '-' (at most 128 characters)", "registry_name")]
# MLflow takes any registered name; the factory passes only these into labels, filters and file names.
REGISTRY_NAME_HINT = ("register the version under such a name too, e.g. "
                      "MlflowClient().copy_model_version('models:/NAME/VERSION', 'fraud-model'), and name that here")
Alias = Annotated[str, _checked(ALIAS_PATTERN, "must start with a letter and contain only ASCII letters, "
                                               "digits, '_' and '-'")]
GpuType = Annotated[str, _checked(GPU_TYPE_PATTERN, "must be a lowercase node label value such as "
                                                    "'nvidia-tesla-t4' (letters, digits, '.', '-')")]
Namespace = Annotated[str, _checked(NAMESPACE_PATTERN, "must be a DNS-1123 label: lowercase letters, digits "
                                                       "and '-', at most 63 characters")]
SecretName = Annotated[str, _checked(SECRET_NAME_PATTERN, "must be a Secret's name: a DNS-1123 subdomain (lowercase "
                                                         "letters, digits, '-' and '.', at most 253 characters)")]
Requirement = Annotated[str, _checked(REQUIREMENT_PATTERN, "must be a package requirement such as "
                                                            "'lightgbm==4.7.0' or 'tabulate>=0.9' (no spaces, URLs or "
                                                            "markers)")]
ImageRegistry = Annotated[str, _checked(IMAGE_REGISTRY_PATTERN, "must be an image repository prefix such as "
                                                                "'registry.example.com/team' (lowercase)")]


def _quantity(pattern: str, example: str):
    compiled = re.compile(pattern)

    def check(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise PydanticCustomError("quantity", f"must be a quantity such as {example} (got {shown(value)})")
        text = str(value)
        if not compiled.fullmatch(text) or not any(ch in "123456789" for ch in text.rstrip("KMGTikm")):
            raise PydanticCustomError("quantity", f"must be a positive quantity such as {example} "
                                                  f"(got {shown(value)})")
        return text

    return BeforeValidator(check)


CpuQuantity = Annotated[str, _quantity(CPU_PATTERN, "1, 0.5 or 500m")]
MemoryQuantity = Annotated[str, _quantity(MEMORY_PATTERN, "512Mi or 2Gi")]


def _version(value: Any) -> Any:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Batching(_Strict):
    enabled: StrictBool = True
    max_batch_size: StrictInt = Field(32, ge=1, le=10_000)
    max_latency_ms: StrictInt = Field(300, ge=1, le=600_000)


class Resources(_Strict):
    cpu: CpuQuantity = "1"
    memory: Optional[MemoryQuantity] = None
    memory_headroom: float = Field(0.2, ge=0, le=10)
    memory_limit_factor: float = Field(1.5, ge=1, le=10)
    gpu: StrictInt = Field(0, ge=0, le=16)
    gpu_type: Optional[GpuType] = None

    @model_validator(mode="after")
    def _gpu_type_needs_gpu(self) -> "Resources":
        if self.gpu_type is not None and self.gpu == 0:
            raise PydanticCustomError("gpu_type_without_gpu",
                                      "gpu_type is set but gpu is 0; set gpu: 1 (or more) or remove gpu_type")
        return self

    @property
    def cores(self) -> Fraction:
        """The CPU request in cores (`500m`: 1/2)."""
        return Fraction(self.cpu[:-1]) / 1000 if self.cpu.endswith("m") else Fraction(self.cpu)

    @property
    def threads(self) -> int:
        """Threads for the model's native thread pools: its CPU budget rounded up, as BentoML's runners size them."""
        return max(1, math.ceil(self.cores))


class Scaling(_Strict):
    min_replicas: StrictInt = Field(1, ge=0, le=1_000)
    max_replicas: StrictInt = Field(3, ge=1, le=1_000)
    # None: derived from the capacity `factory test` measured (factory/autoscaling.py).
    target_cpu_percent: Optional[StrictInt] = Field(None, ge=1, le=100)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> "Scaling":
        if self.min_replicas > self.max_replicas:
            raise PydanticCustomError("replicas_order", f"min_replicas ({self.min_replicas}) is above "
                                                        f"max_replicas ({self.max_replicas})")
        return self


class Serving(_Strict):
    # Added to (or overriding, by package name) the model's own recorded requirements in its Bento.
    packages: list[Requirement] = Field(default_factory=list, max_length=100)
    # A NaN/inf output is a model defect: its request fails, unless this serves it as null.
    allow_non_finite: StrictBool = False


class Compile(_Strict):
    # `factory build` serves a compiled (ONNX) form only when it reproduces the registry model's golden
    # predictions: floats within rtol (relative) or atol (absolute); classes, strings and integers exactly.
    enabled: StrictBool = True
    rtol: float = Field(1e-6, ge=0, le=1)
    atol: float = Field(0.0, ge=0)


class Slo(_Strict):
    """The latency objective `factory test` measures capacity against (README: "Capacity")."""

    p99_ms: StrictInt = Field(100, ge=1, le=60_000)


class _Routed(_Strict):
    endpoint: Segment
    parameters: list[Segment] = Field(default_factory=list, max_length=16)

    @property
    def route(self) -> str:
        return "/" + "/".join([self.endpoint, *self.parameters])


class ModelSpec(_Routed):
    """One served model, fully resolved (defaults applied, matrix expanded)."""

    name: Name
    registry_name: Optional[RegistryName] = None
    # MLflow stores a version in an INTEGER column: 32 bits on MySQL and PostgreSQL; sqlite overflowed past 64.
    version: Annotated[Optional[StrictInt], BeforeValidator(_version), Field(ge=1, le=2**31 - 1)] = None
    alias: Optional[Alias] = None
    batching: Batching = Batching()
    resources: Resources = Resources()
    scaling: Scaling = Scaling()
    serving: Serving = Serving()
    compile: Compile = Compile()
    slo: Slo = Slo()

    @model_validator(mode="after")
    def _version_or_alias(self) -> "ModelSpec":
        if (self.version is None) == (self.alias is None):
            raise PydanticCustomError(VERSION_OR_ALIAS, VERSION_OR_ALIAS_MESSAGE)
        return self

    @property
    def registered_as(self) -> str:
        return self.registry_name or self.name

    @property
    def registry_ref(self) -> str:
        """What the registry is asked for: a version number or an @alias."""
        return str(self.version) if self.version is not None else f"@{self.alias}"

    @property
    def k8s_name(self) -> str:
        return self.name.lower().replace("_", "-")


class StickyKeySpec(_Strict):
    header: Optional[Annotated[str, _checked(HEADER_PATTERN, "must be an HTTP header name (letters, digits, '-')")]] = None
    field: Optional[Annotated[str, _checked(FIELD_PATTERN, "must be a JSON field name (letters, digits, '_')")]] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "StickyKeySpec":
        if (self.header is None) == (self.field is None):
            raise PydanticCustomError("sticky_key", "set exactly one of `header` (e.g. X-User-Id) or "
                                                    "`field` (a JSON body field such as user_id)")
        return self

    @property
    def source(self) -> Literal["header", "field"]:
        return "header" if self.header is not None else "field"

    @property
    def key_name(self) -> str:
        return self.header if self.header is not None else self.field  # type: ignore[return-value]


class VariantSpec(_Strict):
    model: Name
    weight: StrictInt = Field(ge=0, le=100)


class ExperimentSpec(_Routed):
    name: Name
    sticky_key: Optional[StickyKeySpec] = None
    variants: list[VariantSpec] = Field(min_length=2)
    shadows: list[Name] = Field(default_factory=list)


class KubernetesSettings(_Strict):
    namespace: Namespace = "model-factory"
    image_registry: ImageRegistry = "registry.example.com/model-factory"
    service_port: StrictInt = Field(3000, ge=1, le=65_535)
    # Secrets of type kubernetes.io/dockerconfigjson the pods pull their images with (a private registry such as
    # a GitLab project's: README "Running on GitLab").
    image_pull_secrets: list[SecretName] = Field(default_factory=list, max_length=16)


RunnerTag = Annotated[str, _checked(RUNNER_TAG_PATTERN, "must be a runner tag such as 'gpu' (letters, digits, "
                                                       "'.', '_', '-')")]
CiImage = Annotated[str, _checked(CI_IMAGE_PATTERN, "must be an image reference such as 'python:3.11-bookworm' "
                                                    "(lowercase)")]


class EnvironmentSpec(_Strict):
    name: Namespace = "production"
    protected: StrictBool = False


class PipelineSettings(_Strict):
    """How the generated GitLab child pipeline runs: image, runner tags, the deploy environment, shards."""

    image: CiImage = "python:3.11-bookworm"
    gpu_runner_tags: list[RunnerTag] = Field(default_factory=lambda: ["gpu"], min_length=1, max_length=16)
    environment: EnvironmentSpec = EnvironmentSpec()
    # The Docker-in-Docker service of the jobs that build and push images (null: no engine, images skipped),
    # and the public Debian image their base image starts from (README "Running on GitLab"). Both pinned.
    docker_service: Optional[CiImage] = "docker:27.5.1-dind"
    base_rootfs: CiImage = "debian:bookworm-20251229-slim"
    # Past this many changed models the child pipeline is cut into shard children (README "Scale"): 150 models
    # are 450 model jobs + 3 collectors + apply, within GitLab.com Free's 500 jobs per pipeline.
    models_per_child: StrictInt = Field(150, ge=1, le=600)


class Catalog(_Strict):
    """The whole of models.yaml, validated and expanded. Order is the file's order."""

    kubernetes: KubernetesSettings = KubernetesSettings()
    pipeline: PipelineSettings = PipelineSettings()
    models: tuple[ModelSpec, ...]
    experiments: tuple[ExperimentSpec, ...] = ()
    # "models.yaml:12" per model name, so later steps (registry, build) can point at the entry.
    origins: dict[str, str] = Field(default_factory=dict, exclude=True)

    def where(self, name: str) -> str:
        return f"{self.origins.get(name, 'models.yaml')}: model '{name}'"
