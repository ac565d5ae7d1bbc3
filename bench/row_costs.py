"""Per-row costs of a served request by rows per request, in process: decoding the body (the API's pydantic model
against the pod's msgspec shortcut, mf_decode), predicting (Predictor.predict, the in-process floor) and encoding
the answer, and the share of the three that is the model's predict, with either decoder.

Usage: python -m bench.row_costs [--model NAME ...] [--rows 32 128 512 2048] [--seconds 0.5]
Needs the example registry (`make registry`); builds the models if needed. Runs in each model's own serving venv,
pinned to core 1, on complete golden rows repeated to each size (the server's MAX_ROWS does not apply here). No HTTP:
what a served request adds on top (uvicorn, the socket) is bench.latency's "HTTP alone". Whether bigger requests
bring a served request nearer its floor depends on how the decode per row compares with the predict per row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench import use_example_registry
from bench.latency import IN_POD
from bench.serving import ROOT, complete_rows
from factory.runtime import bento_python
from factory.serve import bento_source
from factory.state import StateDir

DEFAULT_MODELS = ["match_probability_2_TAXI_trafficaware", "eta_minutes_5_PHV"]
# After bench.latency's IN_POD; argv: the rows, the sizes, the seconds per figure. Each size gets a request model of
# its own (the pod's stops at MAX_ROWS).
PROBE = IN_POD + """import mf_fast, mf_schema
from pydantic import create_model
inputs = resolved["signature"]["inputs"]
golden, sizes, budget_s = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
us = lambda call: seconds(call, budget_s) * 1e6
for size in sizes:
    body = json.dumps({"inputs": [golden[index % len(golden)] for index in range(size)]}).encode()
    request_model = create_model("Request", inputs=(mf_schema.inputs_type(inputs, size), ...))
    shortcut = mf_decode.decoder(inputs, size)
    rows = request_model.model_validate_json(body).inputs
    outputs = predictor.predict(rows)
    print(json.dumps({"rows": size, "pydantic": us(lambda: request_model.model_validate_json(body)),
                      "shortcut": shortcut and us(lambda: shortcut(body)), "predict": us(lambda: predictor.predict(rows)),
                      "encode": us(lambda: mf_fast.settled(outputs))}), flush=True)
"""


def probe(state: StateDir, name: str, sizes: list[int], seconds: float) -> list[dict]:
    record = state.build_record(name)
    golden = complete_rows(state.golden(name, Path(record.golden)))
    command = ["taskset", "-c", "1", str(bento_python(state, name)), "-c", PROBE, json.dumps(golden),
               json.dumps(sizes), str(seconds)]
    done = subprocess.run(command, cwd=bento_source(record.bento_tag), check=True, capture_output=True, text=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def print_model(name: str, figures: list[dict]) -> None:
    print(f"\n## {name}: µs per request (per row), in process")
    print(f"{'rows':>6} {'pydantic':>15} {'shortcut':>15} {'x':>5} {'predict':>15} {'encode':>13} "
          f"{'predict share, pydantic / shortcut':>36}")
    for figure in figures:
        rows, pydantic, shortcut = figure["rows"], figure["pydantic"], figure["shortcut"]
        rest = figure["predict"] + figure["encode"]
        share = f"{figure['predict'] / (pydantic + rest):.0%}"
        if shortcut is not None:
            share += f" / {figure['predict'] / (shortcut + rest):.0%}"
        print(f"{rows:>6} {_cell(pydantic, rows):>15} {_cell(shortcut, rows):>15} "
              f"{(f'{shortcut / pydantic:.2f}' if shortcut else '-'):>5} {_cell(figure['predict'], rows):>15} "
              f"{_cell(figure['encode'], rows):>13} {share:>36}")


def _cell(us: float | None, rows: int) -> str:
    return "-" if us is None else f"{us:,.1f} ({us / rows:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help=f"repeatable (default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 32, 128, 512, 2048])
    parser.add_argument("--seconds", type=float, default=0.5, help="sampling time per figure")
    args = parser.parse_args()
    state = StateDir.from_env().activate()
    use_example_registry()
    names = args.model or DEFAULT_MODELS
    subprocess.run([sys.executable, "-m", "factory.cli", "build", *names, "--no-image"], cwd=ROOT, check=True)
    for name in names:
        print_model(name, probe(state, name, args.rows, args.seconds))


if __name__ == "__main__":
    main()
