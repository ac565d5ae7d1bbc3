"""The state directory: everything the factory produces after render, and the one place its paths come from.

One directory (default `factory-state/`, or $FACTORY_STATE) so CI can pass it between jobs as an artifact:

    builds/<model>/record.json        BuildRecord: what `factory build` made (read by test, manifests, up)
    builds/<model>/src/resolved.json  ResolvedRecord: the registry version, signature and flavor built from
    builds/<model>/golden.json        the registry model's own predictions on sampled requests
    reports/<model>/report.json       TestReport: what `factory test` measured (read by manifests, summary)
    summary.json, summary.md          Summary: per route and variant, for people and merge requests
    k8s/                              sized manifests and their kustomization
    bentoml/                          BentoML's model and Bento stores (unless BENTOML_HOME says otherwise)

Records are typed; loading one that is unreadable, truncated or of the wrong shape raises a StateError
naming the file and the command that writes it again. Commands create the folders they write to.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

import pydantic

from factory import atomic
from factory.errors import StateError
from factory.fuzz_report import Failure
from factory.settings import Settings

RecordT = TypeVar("RecordT", bound="Record")


class Record(pydantic.BaseModel):
    """A JSON file in the state directory, written whole (never half) and validated when read."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    def save(self, path: Path) -> None:
        write_atomic(path, self.text())

    def text(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load_from(cls: type[RecordT], path: Path, fix: str) -> RecordT:
        document = read_json(path, fix)
        try:
            return cls.model_validate(document)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(top level)"
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise StateError(f"{path}: {where}: {first['msg']}{more}; the file is not what this factory "
                             f"writes: {fix}") from exc


class BuildRecord(Record):
    model: str
    content_hash: str
    registry: dict[str, Any]
    bento_model_tag: str
    bento_tag: str
    bento_export: str
    image: str  # the tag it is (or would be) pushed as
    image_ref: str = ""  # repository@sha256:… as pushed; "" when no image was built
    image_size_bytes: int = pydantic.Field(default=0, ge=0)
    image_build_seconds: float = pydantic.Field(default=0.0, ge=0)
    dockerfile: str
    golden: str
    # Which form serves: "compiled" (ONNX, exact on the golden requests), "native" (the flavor's own library) or
    # "pyfunc" (MLflow's pyfunc: a PythonModel, or a flavor whose native loader failed), and why, as `factory build`
    # printed it. Records written before "pyfunc" existed say "native" for those and still load.
    serving_path: Literal["compiled", "native", "pyfunc"] = "native"
    serving_reason: str = ""

    @property
    def image_built(self) -> bool:
        return bool(self.image_ref)


class PushedImage(Record):
    """An image as the registry holds it (the proxy's: builds/proxy/image.json)."""

    tag: str
    reference: str  # repository@sha256:…, what manifests deploy
    size_bytes: int = pydantic.Field(ge=0)
    build_seconds: float = pydantic.Field(ge=0)
    push_seconds: float = pydantic.Field(ge=0)
    log: str


class ResolvedRecord(Record):
    bento_model_tag: str
    signature: dict[str, Any]
    flavor: dict[str, Any]
    registry: dict[str, Any]
    # The Bento's packages (also its requirements.txt): the model's own merged with the runtime's pins.
    requirements: list[str]


class FuzzSummary(Record):
    passed: bool
    requests_fuzzed: int = pydantic.Field(ge=0)
    failed_requests: int = pydantic.Field(ge=0)
    latency_p50_ms: float = pydantic.Field(ge=0)
    latency_p99_ms: float = pydantic.Field(ge=0)


class CapacityStep(Record):
    """One rung of the capacity ladder: closed-loop load at `connections` keep-alive connections; or, with
    `offered_rps`, open-loop load arriving at that rate (`connections`: how many its pool opened)."""

    connections: int = pydantic.Field(ge=1)
    requests: int = pydantic.Field(ge=0)
    rps: float = pydantic.Field(ge=0)
    p50_ms: float = pydantic.Field(ge=0)
    p99_ms: float = pydantic.Field(ge=0)
    shed: int = pydantic.Field(ge=0)  # well-formed 503s (error shape + Retry-After)
    failures: int = pydantic.Field(ge=0)  # anything else a valid request must never get
    statuses: dict[str, int]
    cpu_percent: Optional[float] = pydantic.Field(None, ge=0)  # the server's CPU, one core = 100
    attempts: int = pydantic.Field(1, ge=1, le=2)  # 2: it missed the objective once and was measured again
    offered_rps: Optional[float] = pydantic.Field(None, gt=0)  # open loop: the arrival rate; None: closed loop
    client_late_ms: Optional[float] = pydantic.Field(None, ge=0)  # open loop: how late the client sent (p99)
    # Open loop: the arrivals sent before the step stopped with its miss already certain (a 503, a failure, or more
    # answers over the objective than a p99 of all its arrivals allows: loadgen.run_open_load); None: it ran its course.
    stopped_after: Optional[int] = pydantic.Field(None, ge=1)


class CapacityReport(Record):
    """What `factory test` measured a model sustains: the HPA's target and the platform team's figure."""

    slo_p99_ms: int = pydantic.Field(ge=1)
    rps: float = pydantic.Field(ge=0)  # 0: missed the objective (or shed) even at one connection
    connections: int = pydantic.Field(ge=0)
    p99_ms: float = pydantic.Field(ge=0)
    cpu_percent: Optional[float] = pydantic.Field(None, ge=0)  # None: the server's CPU was not visible
    # The CPUs the server was given (a quota: its pod's CPU request, at most the engine's CPUs); None: no quota
    # (the host process, on every core of the test machine; and reports written before quotas).
    cpu_limit: Optional[float] = pydantic.Field(None, gt=0)
    # models.yaml's resources.cpu when it was measured (None: reports written before it was kept)
    cpu_request: Optional[str] = None
    steps: list[CapacityStep]
    # The closed-loop capacity re-checked with requests arriving at random (factory/capacity.py): each rate tried
    open_loop: list[CapacityStep] = []
    # The highest rate tried open loop that the client could not offer (capacity.CLIENT_LATE_SHARE): not confirmed.
    unconfirmed_rps: Optional[float] = pydantic.Field(None, gt=0)

    @property
    def failures(self) -> int:
        return sum(step.failures for step in self.steps + self.open_loop)

    @property
    def shed(self) -> int:
        return sum(step.shed for step in self.steps)


class MemoryReport(Record):
    peak_mib: float = pydantic.Field(ge=0)
    sampler: str
    memory_limit: Optional[str] = None  # the container's limit; None when measured as a host process
    phases: dict[str, dict[str, float]]


class TestReport(Record):
    __test__ = False  # not a pytest class, despite the name

    model: str
    route: str
    passed: bool
    # Set when the model never answered (not built, did not start): then nothing was measured.
    error: Optional[str] = None
    bento_tag: str = ""
    seed: int = 0
    url: str = ""
    serve_log: str = ""
    catalog: str = "models.yaml"
    fuzz: Optional[FuzzSummary] = None
    capacity: Optional[CapacityReport] = None
    memory: Optional[MemoryReport] = None
    # sizing divides by it; a sampler that saw nothing is an error (None: nothing was measured)
    peak_bytes: Optional[int] = pydantic.Field(None, gt=0)
    failures: list[Failure] = []


class SummaryRow(Record):
    route: str
    variant: str
    model: str
    fuzz: str
    requests: str
    p99_ms: str
    capacity_rps: str
    peak_mib: str
    memory_request: str
    limit: str


class Summary(Record):
    rows: list[SummaryRow]


@dataclass(frozen=True)
class StateDir:
    root: Path
    # (model, directory): that model's build directory is being staged there (`staging`), swapped in whole later
    staged_build: Optional[tuple[str, Path]] = None

    @classmethod
    def from_env(cls) -> "StateDir":
        return cls(Settings.from_env().state_dir)

    def activate(self) -> "StateDir":
        """Keep BentoML's model and Bento stores inside the state directory unless BENTOML_HOME says otherwise."""
        os.environ.setdefault("BENTOML_HOME", str(self.root / "bentoml"))
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        return self

    # --- paths: the only place they are spelled ----------------------------------------------------
    def build_dir(self, model: str) -> Path:
        if self.staged_build and self.staged_build[0] == model:
            return self.staged_build[1]
        return self.root / "builds" / model

    def staging(self, model: str, directory: Path) -> "StateDir":
        """This state directory, but with `model`'s build written into `directory` (factory/atomic.py)."""
        return dataclasses.replace(self, staged_build=(model, directory))

    def source_dir(self, model: str) -> Path:
        return self.build_dir(model) / "src"

    def record_path(self, model: str) -> Path:
        return self.build_dir(model) / "record.json"

    def resolved_path(self, model: str) -> Path:
        return self.source_dir(model) / "resolved.json"

    def dockerfile_path(self, model: str) -> Path:
        return self.build_dir(model) / "Dockerfile"

    def image_log(self, name: str) -> Path:
        """`docker build`/`push` output for a model's image, or the proxy's (`proxy` is no model name)."""
        return self.build_dir(name) / "image.log"

    def image_context(self, model: str) -> Path:
        return self.build_dir(model) / "image-context"

    def proxy_image_path(self) -> Path:
        return self.build_dir("proxy") / "image.json"

    def golden_path(self, model: str) -> Path:
        return self.build_dir(model) / "golden.json"

    def report_dir(self, model: str) -> Path:
        return self.root / "reports" / model

    def reports_root(self) -> Path:
        return self.root / "reports"

    def report_path(self, model: str) -> Path:
        return self.report_dir(model) / "report.json"

    def summary_json(self) -> Path:
        return self.root / "summary.json"

    def summary_markdown(self) -> Path:
        return self.root / "summary.md"

    def manifests_dir(self) -> Path:
        return self.root / "k8s"

    def runtime_dir(self) -> Path:
        return self.root / "runtime"

    def up_dir(self) -> Path:
        return self.root / "up"

    def serve_dir(self) -> Path:
        return self.root / "serve"

    # --- records: None when never written, StateError when written but unreadable ----------------
    def build_record(self, model: str) -> Optional[BuildRecord]:
        path = self.record_path(model)
        return BuildRecord.load_from(path, f"run `factory build {model}` again") if path.exists() else None

    def resolved(self, model: str) -> ResolvedRecord:
        return ResolvedRecord.load_from(self.resolved_path(model), f"run `factory build {model}` again")

    def golden(self, model: str, path: Optional[Path] = None) -> list[dict]:
        cases = read_json(path or self.golden_path(model), f"run `factory build {model}` again")
        if not isinstance(cases, list) or not all(isinstance(c, dict) and "inputs" in c for c in cases):
            raise StateError(f"{path or self.golden_path(model)}: expected a list of {{inputs, outputs}} cases; "
                             f"run `factory build {model}` again")
        return cases

    def proxy_image(self) -> Optional[PushedImage]:
        path = self.proxy_image_path()
        return PushedImage.load_from(path, "run `factory build --proxy` again") if path.exists() else None

    def test_report(self, model: str) -> Optional[TestReport]:
        path = self.report_path(model)
        return TestReport.load_from(path, f"run `factory test {model}` again") if path.exists() else None


def read_json(path: Path, fix: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise StateError(f"{path}: missing; {fix}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: unreadable ({_reason(exc)}); {fix}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        state = "empty" if not text.strip() else f"not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})"
        raise StateError(f"{path}: {state}, probably cut short by an interrupted run; {fix}") from exc
    except RecursionError as exc:
        raise StateError(f"{path}: nested too deeply to read; {fix}") from exc


def write_atomic(path: Path, data: str | bytes) -> None:
    """Readers never see half a file (factory/atomic.py)."""
    atomic.write_file(path, data, atomic.IN_STATE)


def write_set(files: dict[Path, Optional[str | bytes]]) -> None:
    """Files that belong together (a report and its JUnit), replaced all or none; None removes one."""
    atomic.replace_files(files, atomic.IN_STATE)


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
