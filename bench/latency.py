"""Latency at low load after a burst, req/s by connections, full-batch rows/s and idle RSS: our Bento
(one process, as the pod runs it) vs `mlflow models serve` of the same registry version, side by side.

Usage: python -m bench.latency [--model NAME ...] [--burst-seconds 10] [--rounds 2]
Needs the example registry (`make registry`); builds the models if needed. wrk (Debian) drives the load
from core 0, the server's process tree is pinned to core 1. Per model and server: idle RSS; then, per
round on a freshly started server, one client in WINDOWS windows of WINDOW_S (fresh), 50 connections
for --burst-seconds, one client again in as many windows (right after the burst); in the last round
req/s at 1, 4, 16, 50 connections with non-2xx counts and rows/s with full batches (max_batch_size rows
per request, 4 connections). Fresh and after-burst figures are medians over every window of every round,
so one noisy second on a shared machine moves neither; the server's CPU time per request (all its
threads) is printed beside them: it does not count time spent waiting for a core. The in-process floor
is Predictor.predict on the same full batch, in the model's own serving venv, on the server's core, sampled
in a process kept beside the server just before each full-batch run (--pairs): on this VM the floor has
measured 2x apart from one run to the next, so the goal's ratio is the median of per-pair ratios, never
one floor against runs made elsewhere.
Our server runs --rounds rounds, mlflow's one. ~80 s per model on a quiet machine.
--full-batch-only measures just our server's idle RSS and full batches against the floor (~20 s per model).
Beside the full batches, "HTTP alone": uvicorn with the pod's options in the same venv on the same core, answering
every full batch with our server's answer to it, canned: the CPU per request no served model can go below, against
what the goal leaves for a whole request (the floor / 0.7). And beside each floor sample, in the same process, the
full batch's body decoded by the API's pydantic model and by the pod's shortcut (templates/bento/mf_decode.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Optional

import psutil

from bench import use_example_registry
from bench.serving import ROOT, _pin, complete_rows, mlflow_served
from bench.wrk import WrkResult, run_wrk
from factory.catalog import ModelSpec
from factory.loader import load_catalog
from factory.memory import MIB, tree_sample
from factory.runtime import bento_python
from factory.serve import Served, bento_source, free_port, process_served, served
from factory.state import StateDir

DEFAULT_MODELS = ["match_probability_2_TAXI_trafficaware", "eta_minutes_5_PHV"]
CONNECTIONS = (1, 4, 16, 50)
WINDOWS = 3
WINDOW_S = 1
LEVEL_S = 2
FULL_BATCH_S = 2
FULL_BATCH_CONNECTIONS = 4
P50, P99, RPS = (lambda run: run.p50_ms), (lambda run: run.p99_ms), (lambda run: run.rps)
FLOOR_S = 1.0
# The start of every script run in a model's own serving venv from its Bento's source directory (here and in
# bench.row_costs): the pod's service module, its predictor, and the median time of a call sampled for a while.
IN_POD = """import json, statistics, sys, time
import bentoml, mf_decode, mf_runtime
from service import MAX_ROWS, RESOLVED as resolved, ModelService
predictor = mf_runtime.Predictor(bentoml.models.get(resolved["bento_model_tag"]).path_of("mlflow_model"), resolved)
def seconds(call, budget_s):
    samples, until = [], time.perf_counter() + budget_s
    while not samples or time.perf_counter() < until:
        started = time.perf_counter(); call(); samples.append(time.perf_counter() - started)
    return statistics.median(samples)
"""
# The floor as a process of its own, kept running beside the server: each line on stdin asks for one sample
# (median of as many full-batch predicts as fit in FLOOR_S), so floor samples and served runs alternate on
# one core and each served run has a floor measured next to it, not minutes earlier in another process.
# Beside it, what decoding the full batch's body costs in the same process: the API's pydantic model, and the pod's
# shortcut (mf_decode) when the signature has one.
FLOOR = IN_POD + """body = json.dumps({"inputs": json.loads(sys.argv[1])}).encode()
request_model = ModelService.apis["predict"].input_spec
rows = request_model.model_validate_json(body).inputs
shortcut = mf_decode.decoder(resolved["signature"]["inputs"], MAX_ROWS)
seconds(lambda: predictor.predict(rows), 0.1)
for line in sys.stdin:
    budget_s = float(line)
    print(json.dumps({"one_row_ms": seconds(lambda: predictor.predict(rows[:1]), budget_s / 4) * 1000,
                      "full_batch_ms": seconds(lambda: predictor.predict(rows), budget_s) * 1000,
                      "pydantic_ms": seconds(lambda: request_model.model_validate_json(body), budget_s / 4) * 1000,
                      "shortcut_ms": shortcut and seconds(lambda: shortcut(body), budget_s / 4) * 1000}), flush=True)
"""
# HTTP alone: the pod's server (uvicorn, httptools, uvloop; mf_serve's options) reading each body and answering it
# with a canned answer of the real size. argv: port, the answer's file.
CANNED = """import sys, uvicorn
ANSWER = open(sys.argv[2], "rb").read()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning", proxy_headers=False,
            lifespan="off")
"""


@dataclass
class Loaded:
    """wrk runs of one kind and the server's CPU time per request in each (µs, all its processes and threads)."""

    runs: list[WrkResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    def median(self, pick: Callable[[WrkResult], float]) -> float:
        return statistics.median(pick(run) for run in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_us)


@dataclass
class Measured:
    server: str
    idle_mib: float = 0.0
    fresh: Loaded = field(default_factory=Loaded)
    burst: Loaded = field(default_factory=Loaded)
    after: Loaded = field(default_factory=Loaded)
    rounds: list[float] = field(default_factory=list)  # after / fresh p50, per round
    levels: dict[int, WrkResult] = field(default_factory=dict)
    full_batch: Loaded = field(default_factory=Loaded)
    answer: bytes = b""  # our server's answer to the full batch
    http_alone: Loaded = field(default_factory=Loaded)
    floors: list[dict] = field(default_factory=list)  # the floor sampled just before each full-batch run

    def floor(self, key: str) -> float:
        return statistics.median(floor[key] for floor in self.floors)

    def pair_ratios(self) -> list[float]:
        """Each full-batch run's rows/s over its own floor sample's (same rows per request)."""
        return [run.rps * floor["full_batch_ms"] / 1000 for run, floor in zip(self.full_batch.runs, self.floors)]


class Floor:
    """The in-process floor's process (FLOOR) on the server's core, sampled between served runs."""

    def __init__(self, python: Path, source: Path, rows: list[dict]):
        self.command = ["taskset", "-c", "1", str(python), "-c", FLOOR, json.dumps(rows)]
        self.source = source

    def __enter__(self) -> "Floor":
        self.process = subprocess.Popen(self.command, cwd=self.source, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        return self

    def sample(self) -> dict:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(f"{FLOOR_S}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process floor ({self.command[3]} in {self.source}) exited with status "
                               f"{self.process.wait()}; its error is printed above")
        return json.loads(line)

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure(name: str, serve: Callable[[], ContextManager[Served]], path: str, one: str, full: str, burst_s: float,
            rounds: int, floor: Optional[Floor] = None, pairs: int = 1) -> Measured:
    measured = Measured(name)
    for round_ in range(rounds):
        with serve() as server:
            _pin(server.pid, "1")
            time.sleep(2)
            if round_ == 0:
                sample = tree_sample(server.pid)
                measured.idle_mib = sample.rss / MIB if sample else 0.0
            url = server.url + path
            fresh = [_loaded(server.pid, url, one, WINDOW_S, 1, measured.fresh) for _ in range(WINDOWS)]
            _loaded(server.pid, url, one, burst_s, 50, measured.burst)
            after = [_loaded(server.pid, url, one, WINDOW_S, 1, measured.after) for _ in range(WINDOWS)]
            measured.rounds.append(statistics.median(r.p50_ms for r in after) /
                                   statistics.median(r.p50_ms for r in fresh))
            if round_ == rounds - 1:
                measured.levels = {connections: run_wrk(url, one, LEVEL_S, connections) for connections in CONNECTIONS}
                _full_batch_pairs(server, url, full, floor, pairs, measured)
    return measured


def full_batches(serve: Callable[[], ContextManager[Served]], full: str, floor: Floor, pairs: int) -> Measured:
    """Idle RSS, then `pairs` full-batch runs of FULL_BATCH_S on one fresh server of ours, each after a floor sample."""
    measured = Measured("our Bento (one process)")
    with serve() as server:
        _pin(server.pid, "1")
        time.sleep(2)
        sample = tree_sample(server.pid)
        measured.idle_mib = sample.rss / MIB if sample else 0.0
        _full_batch_pairs(server, server.url + "/predict", full, floor, pairs, measured)
    return measured


def _full_batch_pairs(server: Served, url: str, full: str, floor: Optional[Floor], pairs: int,
                      into: Measured) -> None:
    """Floor sample, served run, floor sample, served run, ...: both on core 1, never at once. First, our answer
    to one full batch, which http_alone answers canned."""
    request = urllib.request.Request(url, full.encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        into.answer = answer.read()
    for _ in range(pairs):
        if floor:
            into.floors.append(floor.sample())
        _loaded(server.pid, url, full, FULL_BATCH_S, FULL_BATCH_CONNECTIONS, into.full_batch)


def http_alone(python: Path, full: str, into: Measured, logs: Path) -> None:
    """FULL_BATCH_CONNECTIONS of full batches against CANNED (answering `into.answer`) on core 1, as many runs as
    the pairs."""
    with tempfile.NamedTemporaryFile(suffix=".json") as answer:
        answer.write(into.answer)
        answer.flush()
        port = free_port()
        command = ["taskset", "-c", "1", str(python), "-c", CANNED, str(port), answer.name]
        with process_served(command, ROOT, logs / "http-alone.log", port, "/") as server:
            for _ in range(len(into.full_batch.runs)):
                _loaded(server.pid, server.url + "/predict", full, FULL_BATCH_S, FULL_BATCH_CONNECTIONS,
                        into.http_alone)


def _loaded(pid: int, url: str, body: str, seconds: float, connections: int, into: Loaded) -> WrkResult:
    before = _cpu_s(pid)
    result = run_wrk(url, body, seconds, connections)
    into.runs.append(result)
    into.cpu_us.append((_cpu_s(pid) - before) / max(result.requests, 1) * 1e6)
    return result


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server's whole process tree (mlflow serve runs workers)."""
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def bench_model(state: StateDir, spec: ModelSpec, burst_s: float, rounds: int, logs: Path, pairs: int,
                full_batch_only: bool = False) -> None:
    record = state.build_record(spec.name)
    rows = complete_rows(state.golden(spec.name, Path(record.golden)))
    batch = [rows[index % len(rows)] for index in range(spec.batching.max_batch_size)]
    python = bento_python(state, spec.name)
    serve = lambda: served(record.bento_tag, logs / f"{spec.name}.log", "single", python)  # noqa: E731
    full = json.dumps({"inputs": batch})
    with Floor(python, bento_source(record.bento_tag), batch) as floor:
        if full_batch_only:
            ours = full_batches(serve, full, floor, pairs)
            http_alone(python, full, ours, logs)
            print_full_batch(spec, ours)
            return
        ours = measure("our Bento (one process)", serve, "/predict", json.dumps({"inputs": rows[:1]}), full, burst_s,
                       rounds, floor, pairs)
    http_alone(python, full, ours, logs)
    model_uri = f"models:/{record.registry['name']}/{record.registry['version']}"
    mlflow = measure("mlflow models serve", lambda: mlflow_served(model_uri, logs / f"{spec.name}-mlflow.log"),
                     "/invocations", json.dumps({"dataframe_records": rows[:1]}),
                     json.dumps({"dataframe_records": batch}), burst_s, 1)
    print_model(spec, [ours, mlflow])


def print_model(spec: ModelSpec, results: list[Measured]) -> None:
    ours, mlflow = results
    rows = spec.batching.max_batch_size
    floor_ms = ours.floor("full_batch_ms")
    floor_rows_s = rows / floor_ms * 1000
    print(f"\n## {spec.name} (max_batch_size {rows}); in-process predict (median of {len(ours.floors)} samples): "
          f"1 row {ours.floor('one_row_ms'):.3f} ms, {rows} rows {floor_ms:.3f} ms = {floor_rows_s:,.0f} rows/s "
          f"(the floor)")
    print(f"{'':32} {'ours':>16} {'mlflow serve':>16} {'ours / mlflow':>14}")
    _line("idle RSS MiB", ours.idle_mib, mlflow.idle_mib, "{:.0f}")
    for label, pick in (("1 client fresh", lambda m: m.fresh), ("1 client after burst", lambda m: m.after)):
        _line(f"{label} p50 ms", pick(ours).median(P50), pick(mlflow).median(P50), "{:.2f}")
        _line(f"{label} p99 ms", pick(ours).median(P99), pick(mlflow).median(P99), "{:.2f}")
        _line(f"{label} CPU µs/req", pick(ours).cpu, pick(mlflow).cpu, "{:.0f}")
    print(f"{'after / fresh p50':32} {ours.after.median(P50) / ours.fresh.median(P50):>16.2f} "
          f"{mlflow.after.median(P50) / mlflow.fresh.median(P50):>16.2f}   (goal: ours ≤ 1.2; per round: "
          f"{', '.join(f'{ratio:.2f}' for ratio in ours.rounds)}; {len(ours.rounds)} rounds x {WINDOWS} windows "
          f"of {WINDOW_S} s)")
    print(f"{'after / fresh CPU µs/req':32} {ours.after.cpu / ours.fresh.cpu:>16.2f} "
          f"{mlflow.after.cpu / mlflow.fresh.cpu:>16.2f}")
    _line("burst req/s (50 conns)", ours.burst.median(RPS), mlflow.burst.median(RPS), "{:.0f}",
          f"(non-2xx {sum(r.errors for r in ours.burst.runs)} / {sum(r.errors for r in mlflow.burst.runs)})")
    for connections in CONNECTIONS:
        a, b = ours.levels[connections], mlflow.levels[connections]
        _line(f"req/s at {connections} conns (non-2xx)", a.rps, b.rps, "{:.0f}", f"({a.errors} / {b.errors})")
    ours_rows, mlflow_rows = ours.full_batch.median(RPS) * rows, mlflow.full_batch.median(RPS) * rows
    _line(f"full batches rows/s ({FULL_BATCH_CONNECTIONS} conns)", ours_rows, mlflow_rows, "{:,.0f}",
          f"(non-2xx {ours.full_batch.runs[0].errors} / {mlflow.full_batch.runs[0].errors})")
    _line("full batch CPU µs/req", ours.full_batch.cpu, mlflow.full_batch.cpu, "{:,.0f}",
          f"(the floor's {floor_ms * 1000:,.0f} µs is {floor_ms * 1000 / ours.full_batch.cpu:.0%} of ours; "
          f"the rest HTTP, JSON, validation)")
    _print_pairs(ours)
    _print_http_alone(ours)
    _print_decoding(ours)


def print_full_batch(spec: ModelSpec, ours: Measured) -> None:
    rows = spec.batching.max_batch_size
    runs = ours.full_batch.runs
    print(f"\n## {spec.name} (max_batch_size {rows}), full batches only; idle RSS {ours.idle_mib:.0f} MiB")
    floors = ", ".join(f"{floor['full_batch_ms'] * 1000:,.0f}" for floor in ours.floors)
    print(f"in-process floor, {rows} rows, sampled before each run: {floors} µs")
    print(f"ours, {len(runs)} runs of {FULL_BATCH_S} s at {FULL_BATCH_CONNECTIONS} conns: "
          f"{', '.join(f'{run.rps * rows:,.0f}' for run in runs)} rows/s (non-2xx {sum(r.errors for r in runs)}); "
          f"CPU µs/req {', '.join(f'{cpu:,.0f}' for cpu in ours.full_batch.cpu_us)}")
    _print_pairs(ours)
    _print_http_alone(ours)
    _print_decoding(ours)


def _print_pairs(ours: Measured) -> None:
    """The goal's figure: per pair (a floor sample, then the served run after it on the same core), served rows/s
    over the floor's; their median. The floor has measured 2x apart between runs on this VM (BENCHMARKS.md,
    session 8)."""
    ratios = ours.pair_ratios()
    cpu_shares = [floor["full_batch_ms"] * 1000 / cpu for floor, cpu in zip(ours.floors, ours.full_batch.cpu_us)]
    print(f"{'ours full-batch / floor':32} {statistics.median(ratios):>16.0%}   (goal ≥ 70 %; median of "
          f"{len(ratios)} pairs: {', '.join(f'{ratio:.0%}' for ratio in ratios)}; the floor's µs over ours' "
          f"CPU µs per request: {', '.join(f'{share:.0%}' for share in cpu_shares)})")


def _print_http_alone(ours: Measured) -> None:
    """What the goal leaves for a whole served request (the floor / 0.7) beside what HTTP alone costs."""
    allowed = ours.floor("full_batch_ms") * 1000 / 0.7
    print(f"{'HTTP alone CPU µs/req':32} {ours.http_alone.cpu:>16,.0f}   (uvicorn as the pod runs it, the same full "
          f"batches answered with our {len(ours.answer):,}-byte answer, canned; runs: "
          f"{', '.join(f'{cpu:,.0f}' for cpu in ours.http_alone.cpu_us)}; 70 % of the floor leaves {allowed:,.0f} "
          f"µs for a whole request, ours takes {ours.full_batch.cpu:,.0f})")


def _print_decoding(ours: Measured) -> None:
    """The full batch's body decoded in process, beside the floor: the API's pydantic model and the pod's shortcut."""
    pydantic_us = ours.floor("pydantic_ms") * 1000
    if ours.floors[0]["shortcut_ms"] is None:
        print(f"{'decoding the full batch µs':32} {pydantic_us:>16,.1f}   (pydantic; this signature has no shortcut)")
        return
    shortcut_us = ours.floor("shortcut_ms") * 1000
    print(f"{'decoding the full batch µs':32} {shortcut_us:>16,.1f}   (the pod's shortcut, mf_decode; pydantic "
          f"{pydantic_us:,.1f}: {shortcut_us / pydantic_us:.2f}x; in process, medians of {len(ours.floors)} samples)")


def _line(label: str, ours: float, mlflow: float, fmt: str, note: str = "") -> None:
    ratio = f"{ours / mlflow:.2f}" if mlflow else "-"
    print(f"{label:32} {fmt.format(ours):>16} {fmt.format(mlflow):>16} {ratio:>14} {note}".rstrip())


def model_arguments(doc: str, pairs: int) -> argparse.ArgumentParser:
    """What every full-batch benchmark takes: the models (--model, repeatable) and the floor/served pairs."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", action="append", help=f"repeatable (default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--pairs", type=int, default=pairs,
                        help="full-batch runs, each after a floor sample on the same core (a ratio to the floor is "
                             "their median)")
    return parser


def built(names: list[str], catalog: Path = ROOT / "models.yaml", state: Optional[StateDir] = None) -> None:
    """`names` built from `catalog` into `state` (default: FACTORY_STATE's) without images; an unchanged model is
    skipped. BentoML's store stays this process's (StateDir.activate), so both see every Bento built."""
    environment = {**os.environ, **({"FACTORY_STATE": str(state.root)} if state else {})}
    subprocess.run([sys.executable, "-m", "factory.cli", "build", *names, "--no-image", "-f", str(catalog)],
                   cwd=ROOT, check=True, env=environment)


def example_models(args: argparse.Namespace) -> tuple[StateDir, list[ModelSpec]]:
    """The state directory, activated, the example registry in use, and the models asked for (models.yaml's
    entries, in the order asked), built."""
    state = StateDir.from_env().activate()
    use_example_registry()
    names = args.model or DEFAULT_MODELS
    built(names)
    catalog = {model.name: model for model in load_catalog(ROOT / "models.yaml").models}
    return state, [catalog[name] for name in names]


def main() -> None:
    parser = model_arguments(__doc__, pairs=5)
    parser.add_argument("--burst-seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="fresh servers of ours, each burst once")
    parser.add_argument("--full-batch-only", action="store_true",
                        help="only our idle RSS and full-batch rows/s vs the in-process floor (no mlflow, no latency)")
    args = parser.parse_args()
    state, specs = example_models(args)
    logs = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores; above ~1 the machine is shared)")
    for spec in specs:
        bench_model(state, spec, args.burst_seconds, args.rounds, logs, args.pairs, args.full_batch_only)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; serve logs in {logs}")


if __name__ == "__main__":
    main()
