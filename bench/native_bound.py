"""Full batches served by a native (C) bound beside the pod, against the same in-process floor: could a native serving
runtime reach issue 14's last goal, full-batch rows/s ≥ 70 % of the floor, where no Python server does?

The native server (bench/native_bound.c, compiled here with gcc -O2) is the least a native HTTP/JSON server of a
compiled model must do per request: one thread, epoll, HTTP/1.1 keep-alive; POST /predict's JSON body parsed in place
into the ONNX feeds resolved.json lays out; one ONNX Runtime run through its C API (the serving venv's own
libonnxruntime, one intra-op and one inter-op thread, sequential, as the pod's session); the outputs answered as the
pod answers them. It is a bound, not a product, as bench/bare.py's BARE bounds a Python server: no batcher, no
categorical check, no error detail, no graceful shutdown, no metrics or logs (its source lists what else it lacks).
A model whose columns it cannot feed (a tensor signature, a non-scalar column, no compiled form) is skipped.

Per model, first the native server's answer to the full batch must equal the pod's (as parsed JSON, numbers within
1e-12 relative), so must its answers to every golden case (the same status class), and malformed requests must get a
400 without killing it; else this fails loudly before measuring. Then, --pairs times: a floor sample (bench.latency's
Floor: the same full batch's Predictor.predict in the serving venv, on core 1), the pod (`served(..., "single")`), a
floor sample, the native server. Each server is fresh and pinned to core 1; its idle RSS is sampled, then wrk on core
0 sends full batches (the model's max_batch_size rows) at FULL_BATCH_CONNECTIONS, 1 s of warm-up and FULL_BATCH_S
measured. The goal's ratio is per run, served rows/s × the floor sample's seconds per full batch / rows, and its
median is printed. The native server also reports its mean time per request inside it (parse, tensors + run, answer).

Usage: python -m bench.native_bound [--model NAME ...] [--pairs 3]
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

from bench.latency import FULL_BATCH_CONNECTIONS, FULL_BATCH_S, Floor, Loaded, _loaded, example_models, model_arguments
from bench.serving import _pin, complete_rows
from factory.memory import MIB, tree_sample
from factory.runtime import bento_python
from factory.serve import Served, bento_source, free_port, process_served, served
from factory.state import BuildRecord, StateDir

SOURCE = Path(__file__).with_name("native_bound.c")
KINDS = ("pod", "native")
KINDS_FED = {"double", "float", "long", "integer", "boolean", "string"}  # what native_bound.c parses
RELATIVE = 1e-12
IDLE_S = 2  # as bench.latency waits before its idle RSS
STATS = re.compile(r"native_bound stats: requests (\d+) parse_us ([\d.]+) run_us ([\d.]+) answer_us ([\d.]+)")
MARK = 1.2345e-300  # a value in a row, replaced in the body's text by something that is no valid value for it


class Unsupported(Exception):
    """A model the native bound cannot serve."""


@dataclass
class Side:
    """One server's runs: the floor sample taken just before each (µs), its idle RSS at each start, what it reports."""

    floors_us: list[float] = field(default_factory=list)
    runs: Loaded = field(default_factory=Loaded)
    idle_mib: list[float] = field(default_factory=list)
    inside: list[tuple[float, float, float]] = field(default_factory=list)  # native: parse, run, answer µs

    def goal_ratios(self) -> list[float]:
        """Per run: served rows/s over the floor's rows/s (the same rows a request), i.e. req/s × floor seconds."""
        return [run.rps * floor_us / 1e6 for run, floor_us in zip(self.runs.runs, self.floors_us)]


def compiled(directory: Path) -> Path:
    binary = directory / "native_bound"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(SOURCE), "-ldl", "-lm"], check=True)
    return binary


def ort_library(python: Path) -> Path:
    """The serving venv's own ONNX Runtime C library (the pod's onnxruntime package ships it beside its binding)."""
    found = sorted(python.parent.parent.glob("lib/python*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))
    if not found:
        raise Unsupported(f"no libonnxruntime.so.* in {python.parent.parent}")
    return found[-1]


def config(source: Path, library: Path, max_rows: int) -> str:
    """native_bound.c's plain-text config from the Bento's resolved.json (its format is in read_config there)."""
    resolved = json.loads((source / "resolved.json").read_text(encoding="utf-8"))
    flavor, inputs = resolved["flavor"], resolved["signature"]["inputs"]
    if flavor.get("loader") != "onnx":
        raise Unsupported(f"served by {flavor.get('loader', 'pyfunc')}, not compiled to ONNX")
    if any(spec.get("type") not in KINDS_FED or "name" not in spec for spec in inputs):
        raise Unsupported("a tensor signature or a column that is not a named scalar")
    names = [spec["name"] for spec in inputs]
    model = Path(flavor["model_file"])
    lines = [f"library {library}", f"model {model if model.is_absolute() else source / model}", f"max_rows {max_rows}",
             f"output {int(bool(flavor['flatten']))} {flavor['output']}"]
    lines += [f"guard {flavor['guard']}"] if flavor.get("guard") else []
    lines += [f"column {spec['type']} {int(spec.get('required', True))} {spec['name']}" for spec in inputs]
    lines += [f"feed {dtype} {','.join(str(names.index(column)) for column in columns)} {name}"
              for name, dtype, columns in flavor["feeds"]]
    if any("\n" in line for line in lines):
        raise Unsupported("a name with a newline")
    return "\n".join(lines) + "\n"


def _server(kind: str, record: BuildRecord, python: Path, binary: Path, configured: Path,
            log: Path) -> ContextManager[Served]:
    if kind == "pod":
        return served(record.bento_tag, log, "single", python)
    port = free_port()
    return process_served([str(binary), str(port), str(configured)], configured.parent, log, port, "/")


def answer(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url + "/predict", body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def equal(a: Any, b: Any) -> bool:
    """Equal as parsed JSON, numbers within RELATIVE of each other (12 and 12.0 alike)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(equal, a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or abs(a - b) <= RELATIVE * max(abs(a), abs(b))
    return a == b


def malformed(batch: list[dict]) -> list[bytes]:
    """Bodies the bound must refuse with a 400 and live on: bad JSON, bad shapes, bad values, too many rows."""
    first, full = batch[0], json.dumps({"inputs": batch})
    column = next(iter(first))
    marked = json.dumps({"inputs": [{**first, column: MARK}]})
    values = ["1e400", "NaN", "[1]", "{}", "tru", "-", "01", '"\\ud800"', '"x', "1.", "1e"]
    return [b"", b"{", b"[]", b'{"inputs": []}', b'{"inputs": [1]}', b'{"inputs": [{}]}', b"\xff\xfe" * 100,
            full[: len(full) // 2].encode(), (full[:-1] + ', "params": {}}').encode(),
            json.dumps({"inputs": batch + batch[:1]}).encode(),  # one row over max_rows
            json.dumps({"inputs": [{**first, "no such column": 1}]}).encode(),
            *(marked.replace(repr(MARK), value).encode() for value in values)]


def check_answers(pod: str, native: str, full: str, golden: list[dict]) -> str:
    """The native server answers as the pod does, or this raises SystemExit naming the first difference."""
    pod_full, native_full = answer(pod, full.encode()), answer(native, full.encode())
    if pod_full[0] != 200 or native_full[0] != 200 or not equal(pod_full[1], native_full[1]):
        raise SystemExit(f"the native bound's answer to the full batch differs from the pod's:\n  pod    {pod_full}\n"
                         f"  native {native_full}")
    for case in golden:
        body = json.dumps({"inputs": case["inputs"]}).encode()
        (pod_status, pod_answer), (native_status, native_answer) = answer(pod, body), answer(native, body)
        if pod_status // 100 != native_status // 100 or (pod_status == 200 and not equal(pod_answer, native_answer)):
            raise SystemExit(f"the native bound answers a golden case unlike the pod:\n  body   {body[:500]!r}\n"
                             f"  pod    {pod_status} {pod_answer}\n  native {native_status} {native_answer}")
    bodies = malformed(json.loads(full)["inputs"])
    for body in bodies:
        status = answer(native, body)[0]
        if status != 400:
            raise SystemExit(f"the native bound answered {status}, not 400, to {body[:80]!r}")
    with socket.create_connection(("127.0.0.1", int(native.rsplit(":", 1)[1])), timeout=5) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\nx\r\n\r\n")
        if not raw.recv(100).startswith(b"HTTP/1.1 400"):
            raise SystemExit("the native bound did not answer a malformed head with a 400")
    if answer(native, full.encode()) != native_full:
        raise SystemExit("the native bound answers the full batch differently after the malformed bodies")
    return (f"native == pod on the full batch and {len(golden)} golden cases; {len(bodies) + 1} malformed requests "
            "refused with 400")


def bench_model(state: StateDir, name: str, rows_a_request: int, pairs: int, binary: Path, directory: Path) -> dict:
    record = state.build_record(name)
    golden = state.golden(name, Path(record.golden))
    rows = complete_rows(golden)
    batch = [rows[index % len(rows)] for index in range(rows_a_request)]
    full, python, source = json.dumps({"inputs": batch}), bento_python(state, name), bento_source(record.bento_tag)
    configured = directory / f"{name}.conf"
    configured.write_text(config(source, ort_library(python), rows_a_request), encoding="utf-8")
    server = lambda kind, log: _server(kind, record, python, binary, configured, directory / log)  # noqa: E731
    with server("pod", f"{name}-pod-check.log") as pod, server("native", f"{name}-native-check.log") as native:
        checked = check_answers(pod.url, native.url, full, golden)
    sides = {kind: Side() for kind in KINDS}
    with Floor(python, source, batch) as floor:
        for pair in range(pairs):
            for kind in KINDS:
                side, log = sides[kind], directory / f"{name}-{kind}-{pair}.log"
                side.floors_us.append(floor.sample()["full_batch_ms"] * 1000)
                with server(kind, log.name) as running:
                    _pin(running.pid, "1")
                    time.sleep(IDLE_S)
                    sample = tree_sample(running.pid)
                    side.idle_mib.append(sample.rss / MIB if sample else math.nan)
                    url = running.url + "/predict"
                    _loaded(running.pid, url, full, 1, FULL_BATCH_CONNECTIONS, Loaded())  # warm-up
                    _loaded(running.pid, url, full, FULL_BATCH_S, FULL_BATCH_CONNECTIONS, side.runs)
                if kind == "native" and (found := STATS.search(log.read_text(errors="replace"))):
                    side.inside.append(tuple(float(value) for value in found.groups()[1:]))
    return {"rows": len(batch), "checked": checked, "sides": sides}


def print_model(name: str, measured: dict) -> None:
    rows, sides = measured["rows"], measured["sides"]
    floors = [us for side in sides.values() for us in side.floors_us]
    floor = statistics.median(floors)
    print(f"\n## {name}: {rows} rows a request, {FULL_BATCH_CONNECTIONS} connections, {FULL_BATCH_S} s runs; "
          f"in-process floor {floor:,.1f} µs (samples {', '.join(f'{us:,.0f}' for us in floors)})")
    print(measured["checked"])
    print(f"{'server':7} {'rows/s':>10} {'CPU µs/req':>11} {'floor / CPU':>12} {'goal ratio':>11} "
          f"{'idle RSS MiB':>13} {'non-2xx':>8}   per run: goal ratio (CPU µs/req)")
    cpu = {}
    for kind, side in sides.items():
        cpu[kind] = side.runs.cpu
        rows_s = side.runs.median(lambda run: run.rps) * rows
        ratios = side.goal_ratios()
        print(f"{kind:7} {rows_s:>10,.0f} {cpu[kind]:>11,.1f} {statistics.median(side.floors_us) / cpu[kind]:>12.0%} "
              f"{statistics.median(ratios):>11.0%} {statistics.median(side.idle_mib):>13.1f} "
              f"{sum(run.errors for run in side.runs.runs):>8}   "
              f"{', '.join(f'{ratio:.0%} ({us:,.0f})' for ratio, us in zip(ratios, side.runs.cpu_us))}")
    inside = sides["native"].inside
    if inside:
        parse, run, reply = (statistics.median(values) for values in zip(*inside))
        print(f"inside the native server, mean per request (median of its runs): parse {parse:.1f} µs, tensors + "
              f"Run {run:.1f} µs, answer {reply:.1f} µs; the rest of its CPU is HTTP and the kernel's epoll, read, write")
    print(f"CPU per request native / pod: {cpu['native'] / cpu['pod']:.2f}; the goal's 70 % of the floor leaves "
          f"{floor / 0.7:,.0f} µs a request")


def main() -> None:
    args = model_arguments(__doc__, pairs=3).parse_args()
    state, specs = example_models(args)
    directory = Path(tempfile.mkdtemp(prefix="bench-native-bound-"))
    binary = compiled(directory)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for spec in specs:
        try:
            measured = bench_model(state, spec.name, spec.batching.max_batch_size, args.pairs, binary, directory)
        except Unsupported as reason:
            print(f"\n## {spec.name}: skipped, the native bound cannot serve it: {reason}")
            continue
        print_model(spec.name, measured)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; logs and the binary in {directory}")


if __name__ == "__main__":
    main()
