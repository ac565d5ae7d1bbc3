"""`factory test`: serve each built model as its pod would, fuzz it, check golden predictions, and
measure peak memory through idle → fuzz → load. Writes JSON + JUnit reports and a summary table.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import time
import urllib.parse
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from factory import dockerapi, manifests
from factory.bento_store import ensure_in_store
from factory.capacity import CpuClock, capacity_cell, find_capacity, offered, tree_cpu_seconds
from factory.engine import engine_answers
from factory.catalog import Catalog, ModelSpec
from factory.errors import FactoryError, ServeError, StateError
from factory.fuzz import fuzz_service
from factory.fuzz_requests import DEFAULT_MAX_BODY_BYTES, within_body_limit
from factory.fuzz_report import json_text, junit_error_text, junit_text
from factory.loader import load_catalog, select_models
from factory.golden import sample_requests
from factory.memory import MemoryProfile
from factory.runtime import bento_python
from factory.serve import OOMKilled, container_pid, container_served, served, stable_port, stop_on_sigterm
from factory.state import BuildRecord, StateDir, TestReport, write_set
from factory.tables import table

Progress = Callable[[str], None]
IDLE_SECONDS = 2.0
WARM_UP_LIMIT = "2Gi"
LOAD_SECONDS = 6.0


@dataclass(frozen=True)
class TestSettings:
    seed: int = 0
    valid_examples: int = 60
    invalid_examples: int = 120
    load_seconds: float = LOAD_SECONDS


class QualificationFailed(FactoryError):
    """At least one model broke its contract; the reports say which request."""


def test_command(catalog_path: Path, names: Iterable[str], everything: bool, settings: TestSettings,
                 progress: Progress) -> list[TestReport]:
    catalog = load_catalog(catalog_path)
    models = select_models(catalog, names, everything)
    state = StateDir.from_env().activate()
    stop_on_sigterm(128 + signal.SIGTERM)  # a cancelled CI job or `timeout` must not leave a model serving
    reports = []
    for position, model in enumerate(models, start=1):
        # One model that does not build, start or answer must not stop the others.
        try:
            report = qualify(catalog, catalog_path, model, state, settings)
        except FactoryError as exc:
            report = TestReport(model=model.name, route=model.route, passed=False, error=str(exc))
            save_report(state, report, junit_error_text(model.name, report.error), None)
        reports.append(report)
        progress(f"[{position}/{len(models)}] {model.name}: {_verdict(report)}")
    progress(summary_table(reports))
    for note in filter(None, (capacity_note(report, catalog.where(report.model)) for report in reports)):
        progress(note)
    failed = [report for report in reports if not report.passed]
    if failed:
        raise QualificationFailed("\n".join(_failure_lines(report) for report in failed))
    return reports


def capacity_note(report: TestReport, where: str) -> Optional[str]:
    """Why a model that answered load has capacity 0 (`where`: its models.yaml entry): errors (a model failing
    every request is not slow) or latency; or that its capacity was not measured."""
    if report.fuzz is not None and report.capacity is None:
        return (f"note: {where}: no load phase (--load-seconds 0), so its capacity is not measured and its HPA "
                "keeps the default CPU target (70 %); run `factory test` without --load-seconds 0 before deploying")
    first = report.capacity.steps[0] if report.capacity and report.capacity.steps else None
    if not (first and first.requests and not report.capacity.rps):
        return None
    if first.failures:
        return (f"note: {where}: failed {first.failures} of {first.requests} load requests even at one "
                "connection: its capacity is 0; the failures below say why")
    slo = f"its latency objective (p99 ≤ {report.capacity.slo_p99_ms} ms, slo.p99_ms)"
    fix = ("its capacity is 0, and its HPA keeps the default CPU target (70 %); speed the model up or raise "
           "slo.p99_ms")
    if report.capacity.open_loop:
        last = report.capacity.open_loop[-1]
        if not offered(last, report.capacity.slo_p99_ms):
            return (f"note: {where}: the load client could not keep to its schedule even at {last.offered_rps:g} "
                    f"req/s (its arrivals up to {last.client_late_ms:g} ms late, p99): the machine is too busy to "
                    "confirm any rate, so its capacity is 0 and its HPA keeps the default CPU target (70 %); "
                    "run `factory test` again on a quieter machine")
        stopped = f", stopped after {last.stopped_after} arrivals" if last.stopped_after else ""
        return (f"note: {where}: holds {slo} one request at a time but not when requests arrive at random, even "
                f"at {last.offered_rps:g} req/s (p99 {last.p99_ms:.1f} ms, {last.shed} shed{stopped}): {fix}")
    return (f"note: {where}: misses {slo} or sheds even at one connection (p99 {first.p99_ms:.1f} ms, "
            f"{first.shed} shed): {fix}")


def _verdict(report: TestReport) -> str:
    if report.error is not None:
        return "FAILED, " + report.error.replace("\n", "\n  ")
    return (f"{'passed' if report.passed else 'FAILED'}, {report.fuzz.requests_fuzzed} requests fuzzed, "
            f"peak {report.memory.peak_mib} MiB")


def qualify(catalog: Catalog, catalog_path: Path, model: ModelSpec, state: StateDir,
            settings: TestSettings) -> TestReport:
    record = state.build_record(model.name)
    if record is None:
        raise ServeError(f"{catalog.where(model.name)}: no build record in {state.record_path(model.name)}; "
                         f"run `factory build {model.name}` first")
    ensure_in_store(record)
    report_dir = state.report_dir(model.name)
    report_dir.mkdir(parents=True, exist_ok=True)
    # Beside the record, not at the path recorded: a CI job's workspace is not the build job's.
    golden = state.golden(model.name)
    signature = state.resolved(model.name).signature
    runtime = bento_python(state, model.name)
    limit = manifests.sizing_for(model, _previous_peak(state, model.name)).memory_limit
    try:
        with measured_server(record, report_dir / "serve.log", runtime, limit, model.resources.cores) as \
                (url, memory, cpu_seconds, cpu_limit):
            with memory.phase("idle"):
                time.sleep(IDLE_SECONDS)
            with memory.phase("fuzz"):
                fuzz = fuzz_service(url, signature, model.batching.max_batch_size, seed=settings.seed,
                                    valid_examples=settings.valid_examples,
                                    invalid_examples=settings.invalid_examples,
                                    golden=golden, model=model.name, report_dir=report_dir,
                                    catalog=str(catalog_path),
                                    golden_tolerance=_golden_tolerance(model, record))
            capacity = None  # --load-seconds 0: no load phase, so no capacity: unmeasured, not 0
            if settings.load_seconds:
                with memory.phase("load"):
                    capacity = find_capacity(url, load_bodies(signature, model.batching.max_batch_size),
                                             model.slo.p99_ms, settings.load_seconds, cpu_seconds).model_copy(
                        update={"cpu_limit": cpu_limit, "cpu_request": model.resources.cpu})
    except OOMKilled as exc:
        raise ServeError(f"{catalog.where(model.name)}: {model.name} was OOM-killed at the memory limit {limit} "
                         "its manifest carries; raise resources.memory (or memory_limit_factor) in models.yaml. "
                         f"Container log: {report_dir / 'serve.log'}") from exc
    if memory.peak_bytes <= 0:
        raise ServeError(f"{catalog.where(model.name)}: no memory sample of the served model was taken "
                         f"({memory.report()['sampler']}); its process ended early? See {report_dir / 'serve.log'}")
    report = TestReport(model=model.name, route=model.route, bento_tag=record.bento_tag, seed=settings.seed,
                        url=url, serve_log=str(report_dir / "serve.log"), catalog=str(catalog_path),
                        passed=fuzz.passed and not (capacity and capacity.failures), fuzz=fuzz.summary(),
                        capacity=capacity,
                        memory={**memory.report(), "memory_limit": limit if record.image_built else None},
                        peak_bytes=memory.peak_bytes, failures=list(fuzz.failures))
    save_report(state, report, junit_text([fuzz]), json_text(fuzz))
    return report


def save_report(state: StateDir, report: TestReport, junit: bytes, fuzz: Optional[str]) -> None:
    """The report, its JUnit and its fuzz details, replaced together: never one run's beside another's.
    A model that never answered has no fuzz details (an older run's are removed)."""
    report_dir = state.report_dir(report.model)
    write_set({state.report_path(report.model): report.text(), report_dir / "junit.xml": junit,
               report_dir / "fuzz.json": fuzz})


def _previous_peak(state: StateDir, model: str) -> Optional[int]:
    """The last measured peak (the container's limit comes from it); a report this run is about to replace
    that an older factory wrote in another shape counts as none, rather than blocking its own rewrite."""
    try:
        return manifests.measured_peak(state, model)
    except StateError:
        return None


@contextlib.contextmanager
def measured_server(record: BuildRecord, log: Path, runtime: Path, memory_limit: str,
                    cores: Fraction) -> Iterator[tuple[str, MemoryProfile, CpuClock, Optional[float]]]:
    """The pushed image as a container under the manifest's memory limit, measured as its cgroup counts it
    (what the kubelet enforces), and given the CPU its pod is guaranteed (`resources.cpu`, the request: as a
    CFS quota, at most the engine's CPUs); without an engine, the Bento in the lean runtime venv, one process,
    as the pod runs it (memory of the process tree), on every core of this machine. The report's
    `memory.sampler` says which, and `capacity.cpu_limit` the CPUs (None: no quota). The CPU clock reads the
    server's CPU seconds (None where its process is not visible from here: a remote engine)."""
    if record.image_built and engine_answers():
        # The page cache of the image's files is charged to the first container that reads them: on a node
        # that has run the image before (every replica but the first) a pod is not. Warm it, then measure.
        with container_served(record.image_ref, log, WARM_UP_LIMIT):
            pass
        cpus = min(cores, dockerapi.cpus())
        with container_served(record.image_ref, log, memory_limit, port=stable_port(record.model),
                              cpus=cpus) as container, MemoryProfile.of_container(container.container) as memory:
            pid = container_pid(container.container)
            yield container.url, memory, lambda: tree_cpu_seconds(pid) if pid else None, float(cpus)
        return
    with served(record.bento_tag, log, "single", runtime, port=stable_port(record.model)) as server, \
            MemoryProfile.of_process(server.pid) as memory:
        yield server.url, memory, lambda: tree_cpu_seconds(server.pid), None


def load_bodies(signature: dict, max_batch_size: int) -> list[bytes]:
    """Valid requests from the signature plus one full batch: the largest input accepted, for the memory peak."""
    requests = sample_requests(signature, count=16, batch_size=min(4, max_batch_size), seed=1)
    rows = [row for request in requests for row in request["inputs"]]
    full = within_body_limit({"inputs": [rows[index % len(rows)] for index in range(max_batch_size)]},
                             DEFAULT_MAX_BODY_BYTES)
    return [json.dumps(request).encode() for request in requests + [full]]


def summary_table(reports: list[TestReport]) -> str:
    rows = [_summary_row(r) for r in reports]
    return table(["model", "route", "result", "fuzzed", "failed", "p50/p99 ms", "capacity rps", "idle MiB", "fuzz MiB",
                  "load MiB"], rows)


def _summary_row(r: TestReport) -> list[str]:
    if r.error is not None:
        return [r.model, r.route, "FAIL", "-", "-", "-", "-", "-", "-", "-"]
    return [r.model, r.route, "pass" if r.passed else "FAIL", str(r.fuzz.requests_fuzzed),
            str(r.fuzz.failed_requests), f"{r.fuzz.latency_p50_ms:.1f}/{r.fuzz.latency_p99_ms:.1f}",
            capacity_cell(r.capacity),
            *(f"{r.memory.phases.get(phase, {}).get('rss_mib', 0):.0f}" for phase in ("idle", "fuzz", "load"))]


def _serve_again(report: TestReport) -> str:
    """`factory serve` on the port the failing run used, so the printed curl reaches it as is."""
    port = urllib.parse.urlsplit(report.url).port
    return shlex.join(["factory", "serve", "-f", report.catalog, report.model, "--port", str(port)])


def _failure_lines(report: TestReport) -> str:
    if report.error is not None:
        return f"{report.model}: failed: {report.error}"
    lines = [f"{report.model}: failed (serve log: {report.serve_log})"]
    for failure in report.failures:
        # The answer says what the model raised; one line, as a body may hold newlines.
        lines += [f"  {failure.kind}: {failure.reason}", f"  request: {failure.request_excerpt[:300]}",
                  f"  response: {' '.join(failure.response_excerpt.split())[:300]}",
                  f"  replay: {_serve_again(report)} &  # stays up until stopped; it prints its serve log",
                  f"          {failure.replay_curl}", f"  rerun:  {failure.replay_factory}"]
    if report.capacity.failures:
        wrong = {step.connections: step.statuses for step in report.capacity.steps if step.failures}
        wrong.update({f"{step.offered_rps:g} req/s arriving at random": step.statuses
                      for step in report.capacity.open_loop if step.failures})
        lines.append(f"  load phase: {report.capacity.failures} failed requests (503s without the error shape "
                     f"and Retry-After count too), statuses by connections: {wrong}")
    return "\n".join(lines)


def _golden_tolerance(model: ModelSpec, record: BuildRecord) -> tuple[float, float]:
    """A compiled form was kept within the model's `compile` tolerance; a native one answers as the registry does."""
    if record.serving_path == "compiled":
        return max(model.compile.rtol, 1e-6), model.compile.atol
    return 1e-6, 0.0
