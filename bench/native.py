"""Full batches served compiled and served native, side by side, each against its own form's in-process floor and
against the registry model's (native) floor.

Issue 14 took its floor from the registry model (sklearn's 2.6 ms for 32 rows: 12,250 rows/s, of which a served
BentoML reached 47 %). Compiling moves the floor: the compiled form predicts a full batch in tens of microseconds,
and a served request then costs a few times its own predict in HTTP and JSON alone. This benchmark prints the
three ratios in one run, so neither reading hides the other:
- served native / native floor: what the pod's request path costs a model that keeps its flavor;
- served compiled / compiled floor: what it costs the compiled form (bench.latency's goal line);
- served compiled / native floor: the model as registered against the pod as it serves it.

Each example model is built twice: as models.yaml says (compiled where exact), and with compile.enabled false in a
copy of models.yaml, under <state>/bench-native (BentoML's store shared, so the imported model is too). Both
servers run as the pod runs them on core 1, wrk on core 0 with FULL_BATCH_CONNECTIONS of full batches; per pair,
both floors are sampled (bench.latency's Floor, on core 1), then the compiled server's run, then the native one's.
Ratios are medians of per-pair ratios.

Usage: python -m bench.native [--model NAME ...] [--pairs 3]
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.latency import (FULL_BATCH_CONNECTIONS, FULL_BATCH_S, Floor, Loaded, _loaded, built, example_models,
                           model_arguments)
from bench.serving import ROOT, _pin, complete_rows
from factory.catalog import ModelSpec
from factory.runtime import bento_python
from factory.serve import bento_source, served
from factory.state import StateDir


@dataclass
class Form:
    """One form of a model (compiled or native): its floor samples (µs) and its served runs."""

    state: StateDir
    serves: str = ""  # what its build record says serves
    floors_us: list[float] = field(default_factory=list)
    runs: Loaded = field(default_factory=Loaded)

    def rows_s(self, rows: int) -> list[float]:
        return [run.rps * rows for run in self.runs.runs]


def native_state(state: StateDir) -> tuple[StateDir, Path]:
    """A state directory for native builds and a copy of models.yaml with compiling off for every model."""
    root = state.root / "bench-native"
    root.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((ROOT / "models.yaml").read_text(encoding="utf-8"))
    raw.setdefault("defaults", {})["compile"] = {"enabled": False}
    for entry in raw.get("models", []):
        if "compile" in entry:
            entry["compile"]["enabled"] = False
    catalog = root / "models.yaml"
    catalog.write_text(yaml.safe_dump(raw, sort_keys=True), encoding="utf-8")
    return StateDir(root), catalog


def bench_model(spec: ModelSpec, forms: dict[str, Form], pairs: int, logs: Path) -> None:
    record = forms["compiled"].state.build_record(spec.name)
    rows = complete_rows(forms["compiled"].state.golden(spec.name, Path(record.golden)))
    batch = [rows[index % len(rows)] for index in range(spec.batching.max_batch_size)]
    body = json.dumps({"inputs": batch})
    with contextlib.ExitStack() as stack:
        floors, urls, pids = {}, {}, {}
        for kind, form in forms.items():
            record = form.state.build_record(spec.name)
            form.serves = record.serving_path
            python, source = bento_python(form.state, spec.name), bento_source(record.bento_tag)
            floors[kind] = stack.enter_context(Floor(python, source, batch))
            server = stack.enter_context(served(record.bento_tag, logs / f"{spec.name}-{kind}.log", "single", python))
            _pin(server.pid, "1")
            urls[kind], pids[kind] = server.url + "/predict", server.pid
            _loaded(server.pid, urls[kind], body, 1, FULL_BATCH_CONNECTIONS, Loaded())  # warm-up
        for _ in range(pairs):
            for kind, form in forms.items():
                form.floors_us.append(floors[kind].sample()["full_batch_ms"] * 1000)
            for kind, form in forms.items():
                _loaded(pids[kind], urls[kind], body, FULL_BATCH_S, FULL_BATCH_CONNECTIONS, form.runs)


def print_model(spec: ModelSpec, forms: dict[str, Form]) -> None:
    rows = spec.batching.max_batch_size
    print(f"\n## {spec.name}: full batches of {rows} rows, {FULL_BATCH_CONNECTIONS} connections")
    print(f"{'form':9} {'serves':9} {'floor µs':>9} {'floor rows/s':>13} {'served rows/s':>14} {'CPU µs/req':>11} "
          f"{'non-2xx':>8}")
    for kind, form in forms.items():
        floor_us = statistics.median(form.floors_us)
        print(f"{kind:9} {form.serves:9} {floor_us:>9,.0f} {rows / floor_us * 1e6:>13,.0f} "
              f"{statistics.median(form.rows_s(rows)):>14,.0f} {form.runs.cpu:>11,.0f} "
              f"{sum(run.errors for run in form.runs.runs):>8}")
    compiled, native = forms["compiled"], forms["native"]
    for label, served_form, floor_form in (("served native / native floor", native, native),
                                           ("served compiled / compiled floor", compiled, compiled),
                                           ("served compiled / native floor", compiled, native)):
        ratios = [rows_s * floor_us / rows / 1e6
                  for rows_s, floor_us in zip(served_form.rows_s(rows), floor_form.floors_us)]
        print(f"{label:34} {statistics.median(ratios):>8.0%}   (per pair: "
              f"{', '.join(f'{ratio:.0%}' for ratio in ratios)})")


def main() -> None:
    args = model_arguments(__doc__, pairs=3).parse_args()
    state, specs = example_models(args)
    native, native_catalog = native_state(state)
    built([spec.name for spec in specs], native_catalog, native)
    logs = Path(tempfile.mkdtemp(prefix="bench-native-"))
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for spec in specs:
        forms = {"compiled": Form(state), "native": Form(native)}
        bench_model(spec, forms, args.pairs, logs)
        print_model(spec, forms)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; serve logs in {logs}")


if __name__ == "__main__":
    main()
