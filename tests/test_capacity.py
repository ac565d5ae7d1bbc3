"""Capacity: which ladder step it is, the load generator's view of sheds, the HPA and summary built from it."""

from __future__ import annotations

import asyncio
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Optional

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from e2e_support.background import serving
from factory.autoscaling import autoscaling_for
from factory.capacity import capacity_of
from factory.catalog import KubernetesSettings, ModelSpec
from factory.errors import ServeError
from factory.fuzz_report import nearest_rank
from factory.loader import parse_catalog
from factory.loadgen import run_load
from factory.manifests import model_manifests, sizing_for, validate_manifests
from factory.state import CapacityStep, StateDir, TestReport
from factory.summary import summary_rows


def step(connections: int, rps: float, p99_ms: float, shed: int = 0, failures: int = 0, requests: int = 100,
         cpu: Optional[float] = 50.0) -> CapacityStep:
    return CapacityStep(connections=connections, requests=requests, rps=rps, p50_ms=p99_ms / 2, p99_ms=p99_ms,
                        shed=shed, failures=failures, statuses={"200": requests - shed, "503": shed},
                        cpu_percent=cpu)


@pytest.mark.parametrize("steps, rps, connections", [
    ([step(1, 100, 10), step(2, 180, 20), step(4, 300, 60), step(8, 320, 150)], 300, 4),  # 8 misses p99
    ([step(1, 100, 10), step(2, 180, 20, shed=1), step(4, 300, 30)], 100, 1),  # a shed ends it, whatever follows
    ([step(1, 100, 10), step(2, 180, 20, failures=1), step(4, 300, 30)], 100, 1),
    ([step(1, 100, 10), step(2, 90, 20), step(4, 95, 40)], 100, 1),  # the best rate, not the last
    ([step(1, 100, 101)], 0, 0),  # misses the objective at one connection: no capacity
    ([step(1, 0, 0, requests=0)], 0, 0),  # nothing sent (--load-seconds 0)
    ([step(1, 100, 100)], 100, 1),  # p99 exactly at the objective sustains it
])
def test_capacity_is_the_best_rate_before_the_first_miss(steps: list, rps: float, connections: int) -> None:
    capacity = capacity_of(steps, slo_p99_ms=100)
    assert (capacity.rps, capacity.connections) == (rps, connections)
    assert capacity.steps == steps


def test_a_test_without_a_load_phase_says_its_capacity_is_not_measured() -> None:
    """--load-seconds 0 is a quick check, not a capacity of 0: the HPA keeps its default and the summary says '-'."""
    from factory.state import FuzzSummary
    from factory.test import capacity_note

    fuzzed = FuzzSummary(passed=True, requests_fuzzed=3, failed_requests=0, latency_p50_ms=1.0, latency_p99_ms=2.0)
    report = TestReport(model="m", route="/m/a", passed=True, fuzz=fuzzed, capacity=None)
    assert capacity_note(report, "models.yaml:3: model 'm'") == (
        "note: models.yaml:3: model 'm': no load phase (--load-seconds 0), so its capacity is not measured and its "
        "HPA keeps the default CPU target (70 %); run `factory test` without --load-seconds 0 before deploying")
    assert autoscaling_for(MODEL, report.capacity).source == "unmeasured default"


@pytest.mark.parametrize("first, note", [
    (step(1, 100, 34, failures=14, requests=16),
     "note: models.yaml:3: model 'm': failed 14 of 16 load requests even at one connection: its capacity is 0; the "
     "failures below say why"),
    (step(1, 100, 101), "note: models.yaml:3: model 'm': misses its latency objective (p99 ≤ 100 ms, slo.p99_ms) or "
                        "sheds even at one connection (p99 101.0 ms, 0 shed): its capacity is 0, and its HPA keeps the "
                        "default CPU target (70 %); speed the model up or raise slo.p99_ms"),
    (step(1, 100, 10), None),
    (step(1, 0, 0, requests=0), None),
])
def test_a_capacity_of_zero_says_whether_errors_or_latency_made_it(first: CapacityStep, note: Optional[str]) -> None:
    """A model failing every request is not slow: its p99 was within the objective."""
    from factory.test import capacity_note

    report = TestReport(model="m", route="/m/a", passed=False, capacity=capacity_of([first], slo_p99_ms=100))
    assert capacity_note(report, "models.yaml:3: model 'm'") == note


class _Answers(BaseHTTPRequestHandler):
    """200 for `ok`, 200 after 30 ms for `slow`, a well-formed shed for `shed`, a bare 503 for anything else."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        kind = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["kind"]
        if kind in ("ok", "slow"):
            time.sleep(0.03 if kind == "slow" else 0)
            self._answer(200, b"[1.0]", {})
        elif kind == "shed":
            body = json.dumps({"error": {"code": "overloaded", "message": "busy", "field": None}}).encode()
            self._answer(503, body, {"Retry-After": "1"})
        else:
            self._answer(503, b"Service Unavailable", {})

    def _answer(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[str]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Answers)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def test_a_503_without_the_error_shape_or_retry_after_is_a_failure(answering: str) -> None:
    bodies = [json.dumps({"kind": kind}).encode() for kind in ("ok", "shed", "bare")]
    load = run_load(answering, bodies, concurrency=1, duration_s=60, max_requests=6)
    assert load.statuses == {"200": 2, "503": 4}
    assert (load.shed, load.malformed_sheds, load.failures) == (4, 2, 2)


MODEL = ModelSpec.model_validate({"name": "iris", "version": 1, "endpoint": "iris", "resources": {"cpu": "500m"}})
# Measured as `factory test` runs the container: under a quota of the model's CPU request (500m).
MEASURED = capacity_of([step(1, 100, 10, cpu=20.0), step(2, 180, 40, cpu=36.0), step(4, 190, 120, cpu=49.0)],
                       100).model_copy(update={"cpu_limit": 0.5})


@pytest.mark.parametrize("model, capacity, target, source", [
    # 36 % of a core at capacity is 72 % of a 500m request; scale at 80 % of that.
    (MODEL, MEASURED, 57, "slo.p99_ms capacity"),
    # 60 % of a core (measured without a quota) is 120 % of the request, more than a pod on a busy node gets:
    # the target stays at what the request guarantees, × 0.8
    (MODEL, capacity_of([step(1, 100, 10, cpu=60.0)], 100), 80, "slo.p99_ms capacity"),
    (MODEL, capacity_of([step(1, 50_000, 1, cpu=1900.0)], 100), 80, "slo.p99_ms capacity"),  # 19 cores of 0.5
    (MODEL, capacity_of([step(1, 0.5, 90, cpu=0.1)], 100), 1, "slo.p99_ms capacity"),  # 0.2 % of the request
    (MODEL.model_copy(update={"resources": MODEL.resources.model_copy(update={"cpu": "64"})}),
     capacity_of([step(1, 100, 10, cpu=90.0)], 100), 1, "slo.p99_ms capacity"),  # 1.4 % of 64 cores
    (MODEL.model_copy(update={"resources": MODEL.resources.model_copy(update={"gpu": 1})}), MEASURED, 70,
     "gpu model: capacity measured without a GPU"),
    (MODEL.model_copy(update={"scaling": MODEL.scaling.model_copy(update={"target_cpu_percent": 50})}), MEASURED,
     50, "scaling.target_cpu_percent"),
    (MODEL, None, 70, "unmeasured default"),
    (MODEL, capacity_of([step(1, 100, 200)], 100), 70, "capacity 0: see `factory test`"),  # nothing to derive from
    (MODEL, capacity_of([step(1, 100, 10, cpu=None)], 100), 70, "unmeasured default (CPU not visible)"),
])
def test_hpa_target_from_capacity(model: ModelSpec, capacity, target: int, source: str) -> None:
    scaling = autoscaling_for(model, capacity)
    assert (scaling.target_cpu_percent, scaling.source) == (target, source)


def test_the_hpa_carries_the_target_and_the_capacity_figures() -> None:
    files = model_manifests(MODEL, KubernetesSettings(), "r/iris:1", sizing_for(MODEL, None), MEASURED)
    validate_manifests(files)
    hpa = yaml.safe_load(files["iris/hpa.yaml"])
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 57}
    assert hpa["metadata"]["annotations"] == {
        "model-factory/capacity-rps": "180", "model-factory/capacity-slo-p99-ms": "100",
        "model-factory/capacity-p99-ms": "40", "model-factory/capacity-connections": "2",
        "model-factory/capacity-cpu-percent-of-core": "36", "model-factory/capacity-measured-on-cpus": "0.5"}
    unmeasured = yaml.safe_load(model_manifests(MODEL, KubernetesSettings(), "r/iris:1", sizing_for(MODEL, None))
                                ["iris/hpa.yaml"])
    assert "annotations" not in unmeasured["metadata"]
    assert unmeasured["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_the_summary_shows_capacity_against_the_objective(tmp_path: Path) -> None:
    catalog = parse_catalog("- {name: iris, version: 1, endpoint: iris, slo: {p99_ms: 100}}\n"
                            "- {name: rose, version: 1, endpoint: rose}\n")
    state = StateDir(tmp_path)
    TestReport(model="iris", route="/iris", passed=True,
               fuzz={"passed": True, "requests_fuzzed": 3, "failed_requests": 0, "latency_p50_ms": 1.0,
                     "latency_p99_ms": 2.0},
               capacity=MEASURED, memory={"peak_mib": 190.0, "sampler": "psutil process tree", "phases": {}},
               peak_bytes=190 * 2**20).save(state.report_path("iris"))
    rows = summary_rows(catalog, state)
    assert [(row.model, row.capacity_rps) for row in rows] == [("iris", "180 @ p99≤100 on 0.5 cpu"), ("rose", "")]


def test_the_first_step_that_is_only_too_slow_is_measured_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    import factory.capacity as capacity_module

    measured = iter([step(1, 100, 900), step(1, 100, 10), step(2, 180, 20), step(4, 200, 300), step(8, 210, 400)])
    offered = []
    monkeypatch.setattr(capacity_module, "_step", lambda *args: next(measured))
    monkeypatch.setattr(capacity_module, "_open_step", lambda url, bodies, rate, seconds, slo, cpu: offered.append(
        (rate, seconds, slo)) or open_step(rate, 30))
    capacity = capacity_module.find_capacity("http://unused", [], 100, 4, lambda: None, ladder=(1, 2, 4, 8))
    # The stall at one connection was measured again and passed; the miss at 4 is not re-measured.
    assert [(s.connections, s.p99_ms, s.attempts) for s in capacity.steps] == [
        (1, 10, 2), (2, 20, 1), (4, 300, 1), (8, 400, 1)]
    assert (capacity.rps, capacity.connections) == (180, 2)
    assert offered == [(180, 1, 100)]  # then offered open loop for one step's time (180 arrivals), against 100 ms


@pytest.mark.parametrize("rate, step_s, load_s, seconds", [
    (1000.0, 1.0, 6, 1.0), (50.0, 1.0, 6, 2.0), (10.0, 1.0, 6, 10.0), (3.5, 1.0, 6, 15.0),  # 2.5 × the load phase
    (10.0, 0.3, 2, 5.0), (3.5, 0.1, 1, 5.0),  # at least 5 s
    (1.0, 1.0, 20, 50.0), (1.0, 60.0, 20, 60.0)])
def test_an_open_loop_step_waits_for_enough_arrivals_within_a_bound(rate, step_s, load_s, seconds) -> None:
    from factory.capacity import open_seconds

    assert open_seconds(rate, step_s, load_s) == seconds


def open_step(rate: float, p99_ms: float, shed: int = 0, failures: int = 0, cpu: float = 20.0,
              late_ms: float = 0.5) -> CapacityStep:
    return step(3, rate, p99_ms, shed, failures, cpu=cpu).model_copy(update={"offered_rps": rate,
                                                                            "client_late_ms": late_ms})


CLOSED = capacity_of([step(1, 31.2, 47, cpu=17.5), step(2, 36, 89)], 50)


FAST = capacity_of([step(32, 9736, 9, cpu=49.0)], 100)
LATE = 10.1  # ms behind schedule: more than a tenth of a 100 ms objective


@pytest.mark.parametrize("capacity, answers, rates, rps, cpu, unconfirmed", [
    (CLOSED, [open_step(31.2, 45)], [31.2], 31.2, 20.0, None),  # holds: the open-loop step's CPU is the HPA's
    # p99 61 ms open: halved; 15.6 holds, then the rates between are bisected twice: 23.4 holds, 27.3 misses.
    (CLOSED, [open_step(31.2, 61), open_step(15.6, 44), open_step(23.4, 48, cpu=27.0), open_step(27.3, 55)],
     [31.2, 15.6, 23.4, 27.3], 23.4, 27.0, None),
    (CLOSED, [open_step(31.2, 40, shed=1), open_step(15.6, 40, failures=1), open_step(7.8, 49), open_step(11.7, 40,
     shed=1), open_step(9.8, 45, cpu=15.0)], [31.2, 15.6, 7.8, 11.7, 9.8], 9.8, 15.0, None),  # a shed or failure misses
    (CLOSED, [open_step(31.2, 61), open_step(15.6, 55), open_step(7.8, 51)], [31.2, 15.6, 7.8], 0.0, None, None),
    # The client could not keep to 9,736 req/s: unconfirmed, halved without counting as a try.
    (FAST, [open_step(9736, 9, late_ms=LATE), open_step(4868, 4, cpu=24.0), open_step(7302, 9, late_ms=LATE),
            open_step(6085, 5, cpu=31.0)], [9736, 4868, 7302, 6085], 6085, 31.0, 9736),  # refined past a late client
    (FAST, [open_step(9736, 9, late_ms=LATE), open_step(4868, 140), open_step(2434, 150), open_step(1217, 120)],
     [9736, 4868, 2434, 1217], 0.0, None, 9736),  # three offered rates missed: 0, whatever could not be offered
    (FAST, [open_step(9736 / 2 ** n, 1, late_ms=LATE) for n in range(8)], [9736, 4868, 2434, 1217, 608.5, 304.2, 152.1, 76.0],
     0.0, None, 9736),  # a client that never keeps up: bounded, and nothing confirmed
    (capacity_of([step(1, 30, 70)], 50), [], [], 0.0, None, None),  # no closed-loop capacity: nothing to offer
])
def test_the_capacity_is_offered_open_loop_and_halved_until_it_holds(capacity, answers, rates, rps, cpu,
                                                                     unconfirmed) -> None:
    from factory.capacity import confirmed

    asked, replies = [], iter(answers)
    result = confirmed(capacity, lambda rate: asked.append(rate) or next(replies))
    assert (asked, result.rps, result.cpu_percent, result.open_loop) == (rates, rps, cpu, answers)
    assert result.steps == capacity.steps and result.unconfirmed_rps == unconfirmed


def test_a_capacity_lost_to_random_arrivals_says_so() -> None:
    from factory.capacity import confirmed
    from factory.test import capacity_note

    lost = confirmed(CLOSED, lambda rate: open_step(rate, 70, shed=2).model_copy(update={"stopped_after": 9}))
    report = TestReport(model="m", route="/m/a", passed=True, capacity=lost)
    assert capacity_note(report, "models.yaml:3: model 'm'") == (
        "note: models.yaml:3: model 'm': holds its latency objective (p99 ≤ 50 ms, slo.p99_ms) one request at a time "
        "but not when requests arrive at random, even at 7.8 req/s (p99 70.0 ms, 2 shed, stopped after 9 arrivals): "
        "its capacity is 0, and its HPA keeps the default CPU target (70 %); speed the model up or raise slo.p99_ms")
    assert autoscaling_for(MODEL, lost).source == "capacity 0: see `factory test`"


def test_a_capacity_no_rate_of_which_could_be_offered_says_so() -> None:
    from factory.capacity import confirmed
    from factory.test import capacity_note

    unoffered = confirmed(FAST, lambda rate: open_step(rate, 3, late_ms=250))
    report = TestReport(model="m", route="/m/a", passed=True, capacity=unoffered)
    assert (unoffered.rps, unoffered.unconfirmed_rps, len(unoffered.open_loop)) == (0.0, 9736, 8)
    assert capacity_note(report, "models.yaml:3: model 'm'") == (
        "note: models.yaml:3: model 'm': the load client could not keep to its schedule even at 76 req/s (its "
        "arrivals up to 250 ms late, p99): the machine is too busy to confirm any rate, so its capacity is 0 and its "
        "HPA keeps the default CPU target (70 %); run `factory test` again on a quieter machine")


@pytest.mark.parametrize("slo_p99_ms, late_ms, offered", [
    (100, 10.0, True), (100, 10.1, False),  # a tenth of the objective
    (5, 3.0, True), (20, 10.0, True), (20, 10.1, False),  # at least 10 ms: the timer's own jitter is not falling behind
    (1000, 99.0, True), (1000, 101.0, False),
])
def test_a_rate_is_offered_unless_the_client_fell_behind(slo_p99_ms, late_ms, offered) -> None:
    from factory.capacity import offered as was_offered

    assert was_offered(open_step(500, 1, late_ms=late_ms), slo_p99_ms) is offered


def test_a_tight_objective_confirms_a_rate_its_client_sent_a_few_ms_late() -> None:
    """Session 15's stranger: a compiled model held 1,700 req/s with p99 5.3 ms against a 20 ms objective, its
    client's arrivals 2.8 ms late at p99; a tenth of the objective (2 ms) had left it no capacity at all."""
    from factory.capacity import confirmed

    tight = capacity_of([step(4, 3400, 4, cpu=60.0)], 20)
    held = confirmed(tight, lambda rate: open_step(rate, 5.3, late_ms=2.8))
    assert (held.rps, held.unconfirmed_rps) == (3400, None)


def test_latency_counts_from_when_the_client_sent_not_from_its_schedule(answering: str, monkeypatch) -> None:
    """A client whose timer wakes 50 ms late says so (late_ms), but the server answered at once: no latency of
    its requests holds the client's own delay."""
    from factory import loadgen

    slept = asyncio.sleep

    async def oversleeping(seconds: float) -> None:
        await slept(seconds + 0.05)

    monkeypatch.setattr(loadgen.asyncio, "sleep", oversleeping)
    load = loadgen.run_open_load(answering, [json.dumps({"kind": "ok"}).encode()], rate=200, duration_s=0.02)
    assert load.statuses == {"200": 4} and load.late_ms >= 50
    assert max(load.latencies_ms) < 50


def test_open_loop_load_sends_its_arrivals_and_judges_every_503(answering: str) -> None:
    from factory.loadgen import run_open_load

    bodies = [json.dumps({"kind": kind}).encode() for kind in ("ok", "shed", "bare")]
    load = run_open_load(answering, bodies, rate=200, duration_s=0.03)  # ceil(6) arrivals
    assert load.statuses == {"200": 2, "503": 4}
    assert (load.shed, load.malformed_sheds, load.failures) == (4, 2, 2)
    assert load.connections >= 1


def test_a_rate_above_one_client_process_is_sent_from_several(answering: str, monkeypatch) -> None:
    """Each process a Poisson stream of its share with a seed of its own, started together; one result: every
    arrival counted, every 503 judged, and the client's lateness the latest process's."""
    from factory import loadgen

    monkeypatch.setattr(loadgen, "PROCESS_RPS", 100.0)
    monkeypatch.setattr(loadgen.os, "cpu_count", lambda: 2)
    bodies = [json.dumps({"kind": kind}).encode() for kind in ("ok", "shed", "bare")]
    load = loadgen.run_open_load(answering, bodies, rate=400, duration_s=0.05)  # 2 processes × ceil(10) arrivals
    assert load.statuses == {"200": 8, "503": 12} and len(load.answered_ms) == 8
    assert (load.shed, load.malformed_sheds) == (12, 6)
    assert 0 <= load.late_ms < 1000 and load.connections >= 2


@pytest.mark.parametrize("kinds, processes, planned, most_sent", [
    (["shed"], 1, 100, 40),  # the first 503 decides
    (["ok", "ok", "bare"], 1, 100, 40),  # so does a failure
    (["slow"], 1, 100, 50),  # 100 arrivals allow 1 answer over the objective: the second decides
    (["slow"], 2, 200, 100),  # each process judges its own answers against the whole load's allowance (2)
])
def test_an_open_loop_load_stops_once_it_has_missed_its_objective_for_certain(
        answering: str, monkeypatch, kinds: list[str], processes: int, planned: int, most_sent: int) -> None:
    from factory import loadgen

    monkeypatch.setattr(loadgen, "PROCESS_RPS", 100.0)
    monkeypatch.setattr(loadgen.os, "cpu_count", lambda: 2)
    bodies = [json.dumps({"kind": kind}).encode() for kind in kinds]
    load = loadgen.run_open_load(answering, bodies, rate=100.0 * processes, duration_s=1.0, slo_p99_ms=10)
    assert load.stopped and load.sent == load.requests
    # Stopped at the first arrival after the deciding answer (here 2, 4, 7 and 16 arrivals in; the bound leaves room
    # for a busy machine's slow answers).
    assert load.sent <= most_sent < planned


def test_an_open_loop_load_within_its_objective_runs_its_course(answering: str) -> None:
    from factory.loadgen import run_open_load

    load = run_open_load(answering, [b'{"kind": "ok"}'], rate=200, duration_s=0.1, slo_p99_ms=1000)
    assert not load.stopped and load.sent == load.requests == 20 and load.slow == 0


@given(st.lists(st.floats(0, 200, allow_nan=False), min_size=1, max_size=300), st.integers(0, 300),
       st.integers(1, 150))
def test_a_load_stopped_by_its_objective_has_missed_it_whatever_came_after(latencies, more, p99_ms) -> None:
    """Stopped with more slow answers than `arrivals` allow, the p99 of what it got is over the objective, and so is
    that of any load of up to `arrivals` holding those answers: stopping never turns a pass into a miss."""
    from factory.loadgen import LoadResult, Objective

    objective = Objective(p99_ms, arrivals=len(latencies) + more)
    result = LoadResult(slow_over_ms=p99_ms)
    for latency in latencies:
        result.count("200", latency)
    if objective.missed(result):
        assert nearest_rank(latencies, 99) > p99_ms
        assert nearest_rank(latencies + [0.0] * more, 99) > p99_ms
    else:
        assert result.slow == sum(latency > p99_ms for latency in latencies) <= objective.slow_allowed


def test_a_stopped_open_loop_step_never_holds() -> None:
    """A step stopped on its slow answers is a miss even where its rounded p99 reads as the objective."""
    from factory.capacity import confirmed

    stopped = open_step(31.2, 50).model_copy(update={"stopped_after": 12})
    held = confirmed(CLOSED, lambda rate: stopped if rate == 31.2 else open_step(rate, 40))
    assert [step.offered_rps for step in held.open_loop] == [31.2, 15.6, 23.4, 27.3] and held.rps == 27.3


class _ClosesIdle(_Answers):
    """Closes each keep-alive connection once it is idle, as uvicorn does after 5 s (here: at once, without
    saying so in the answer, so the client keeps it in its pool)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        super().do_POST()
        self.close_connection = True


def test_open_loop_load_does_not_reuse_a_connection_the_server_closed_while_idle() -> None:
    """At a low rate the pool's connections sit idle past the server's keep-alive timeout: a client library
    checks a pooled connection before reusing it (the proxy does too), and so does the load generator."""
    from factory.loadgen import run_open_load

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _ClosesIdle)) as server:
        load = run_open_load(f"http://127.0.0.1:{server.server_address[1]}", [b'{"kind": "ok"}'], rate=25,
                             duration_s=1.2)
    assert load.statuses == {"200": 30}


def _spec(**fields) -> ModelSpec:
    return ModelSpec.model_validate({"name": "iris", "version": 1, "endpoint": "iris", **fields})


@pytest.mark.parametrize("model, capacity, target, rps", [
    (_spec(), capacity_of([step(1, 0.5, 90, cpu=0.3)], 100).model_copy(update={"cpu_limit": 1.0}), 1, "0.5"),
    (_spec(resources={"cpu": "250m"}), capacity_of([step(64, 50_000, 3, cpu=25.0)], 100).model_copy(
        update={"cpu_limit": 0.25}), 80, "50000"),
    (_spec(resources={"cpu": "250m"}), capacity_of([step(64, 50_000, 3, cpu=190.0)], 100), 80, "50000"),  # host
    (_spec(), None, 70, None),  # `factory test` skipped: no report
    (_spec(), capacity_of([step(1, 0, 0, requests=0)], 100), 70, "0"),  # --load-seconds 0
    (_spec(scaling={"min_replicas": 4, "max_replicas": 4}), MEASURED, 28, "180"),
    (_spec(scaling={"min_replicas": 0, "max_replicas": 1}), MEASURED, 28, "180"),
    (_spec(resources={"cpu": 2, "gpu": 1, "gpu_type": "nvidia-tesla-t4"}), MEASURED, 70, "180"),
    (_spec(resources={"cpu": "1m"}), MEASURED, 80, "180"),
])
def test_hostile_but_valid_capacity_figures_render_a_valid_hpa_with_a_target_the_request_can_reach(
        model: ModelSpec, capacity, target: int, rps: Optional[str]) -> None:
    files = model_manifests(model, KubernetesSettings(), "r/iris:1", sizing_for(model, 200 * 2**20), capacity)
    validate_manifests(files)  # strict Kubernetes 1.33 schemas and the factory's own checks
    hpa = yaml.safe_load(files["iris/hpa.yaml"])
    assert 1 <= hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == target <= 100
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] == model.scaling.max_replicas
    assert hpa["metadata"].get("annotations", {}).get("model-factory/capacity-rps") == rps


@pytest.mark.parametrize("script, when", [
    ("exit 3", "exited 3 before it was ready"),
    ("echo ready; read share; read go; exit 4", "exited 4 during the load"),
])
def test_a_load_client_process_that_dies_is_one_clear_error(answering: str, monkeypatch, tmp_path, script: str,
                                                             when: str) -> None:
    from factory import loadgen

    client = tmp_path / "client"
    client.write_text(f"#!/bin/sh\n{script}\n")
    client.chmod(0o755)
    monkeypatch.setattr(loadgen, "PROCESS_RPS", 100.0)
    monkeypatch.setattr(loadgen.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(loadgen.sys, "executable", str(client))
    with pytest.raises(ServeError) as raised:
        loadgen.run_open_load(answering, [b"{}"], rate=400, duration_s=0.05)
    assert str(raised.value) == (
        f"load client process 1 of 2 (python -m factory.loadgen) {when}; its error is above. The load was not "
        "measured: run `factory test` again, and if it happens again, report the error above")


def test_the_proxys_overload_answers_are_well_formed_sheds() -> None:
    from factory.load_client import well_formed_shed

    for code in ("overloaded", "upstream_overloaded", "proxy_overloaded"):
        body = json.dumps({"error": {"code": code, "message": "busy", "field": None}}).encode()
        assert well_formed_shed({"retry-after": "1"}, body)
        assert not well_formed_shed({}, body)
    bad_gateway = json.dumps({"error": {"code": "upstream_unavailable", "message": "down", "field": None}}).encode()
    assert not well_formed_shed({"retry-after": "1"}, bad_gateway)
