"""How near a served full batch can come to the in-process floor in Python: the pod, the pod through uvicorn's
ASGI path, and a bare server.

"pod-asgi" is the pod with uvicorn's own HTTP protocol instead of mf_protocol's, so every request goes through the
ASGI app, as every request did before session 16: the side-by-side measure of answering POST /predict in the
protocol.

The bare server is the least a Python HTTP/JSON server of the model can do per request: uvloop, httptools'
parser, the pod's own decode (mf_decode's shortcut), Predictor.predict and orjson, synchronously in the
parser's callback; no ASGI, no batcher, no error handling, no header checks. Nothing serves like that (it
answers a bad body by crashing the connection), and it is not a candidate: it bounds what any rework of the
pod's request path could give. Both run in the model's serving venv on core 1, wrk with full batches at 4
connections (by default) on core 0, alternating pod, pod-asgi, bare, pod, ..., each run after a floor sample
(bench.latency's: the same full batch's Predictor.predict in process, on core 1).

Usage: python -m bench.bare [--model NAME ...] [--pairs 3] [--rows N] [--connections 4]
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

from bench.latency import FULL_BATCH_CONNECTIONS, FULL_BATCH_S, Floor, Loaded, _loaded, example_models, model_arguments
from bench.serving import _pin, complete_rows
from factory.runtime import bento_python, interpreter_environment
from factory.serve import bento_source, free_port, process_served, served
from factory.state import StateDir

# argv: port. Both run from the Bento's source directory in its serving venv.
ASGI = """import sys
import mf_protocol, uvicorn.protocols.http.httptools_impl as httptools_impl
mf_protocol.protocol = lambda fast: httptools_impl.HttpToolsProtocol
sys.argv = ["mf_serve", "--host", "127.0.0.1", "--port", sys.argv[1]]
import mf_serve
mf_serve.main()
"""
BARE = """import asyncio, sys
import bentoml, httptools, mf_decode, mf_runtime, orjson, uvloop
from service import MAX_ROWS, RESOLVED as resolved
predictor = mf_runtime.Predictor(bentoml.models.get(resolved["bento_model_tag"]).path_of("mlflow_model"), resolved)
rows_of = mf_decode.decoder(resolved["signature"]["inputs"], MAX_ROWS)
HEAD = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: "
class Bare(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.parser, self.body = transport, httptools.HttpRequestParser(self), []
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_body(self, body):
        self.body.append(body)
    def on_message_complete(self):
        body, self.body = b"".join(self.body), []
        answer = orjson.dumps(predictor.predict(rows_of(body))) if body else b'"ok"'
        self.transport.write(b"".join((HEAD, str(len(answer)).encode(), b"\\r\\n\\r\\n", answer)))
async def main():
    server = await asyncio.get_running_loop().create_server(Bare, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
uvloop.install()
asyncio.run(main())
"""


def bench_model(state: StateDir, name: str, rows_a_request: int, connections: int, pairs: int, logs: Path) -> dict:
    record = state.build_record(name)
    rows = complete_rows(state.golden(name, Path(record.golden)))
    batch = [rows[index % len(rows)] for index in range(rows_a_request)]
    full, python, source = json.dumps({"inputs": batch}), bento_python(state, name), bento_source(record.bento_tag)
    runs: dict[str, Loaded] = {"pod": Loaded(), "pod-asgi": Loaded(), "bare": Loaded()}
    floors: list[float] = []
    with Floor(python, source, batch) as floor:
        for _ in range(pairs):
            for kind in runs:
                floors.append(floor.sample()["full_batch_ms"] * 1000)
                with _server(kind, record.bento_tag, python, source, logs / f"{name}-{kind}.log") as server:
                    _pin(server.pid, "1")
                    _loaded(server.pid, server.url + "/predict", full, 1, connections, Loaded())  # warm-up
                    _loaded(server.pid, server.url + "/predict", full, FULL_BATCH_S, connections, runs[kind])
    return {"rows": len(batch), "floor_us": floors, "runs": runs}


def _server(kind: str, bento_tag: str, python: Path, source: Path, log: Path):
    if kind == "pod":
        return served(bento_tag, log, "single", python)
    port = free_port()
    environment = {**interpreter_environment(python), "PYTHONPATH": str(source)}
    code, ready = (ASGI, "/readyz") if kind == "pod-asgi" else (BARE, "/")
    return process_served([str(python), "-c", code, str(port)], source, log, port, ready, environment=environment)


def print_model(name: str, connections: int, measured: dict) -> None:
    floor = statistics.median(measured["floor_us"])
    print(f"\n## {name}: {measured['rows']} rows a request, {connections} connections; in-process floor "
          f"{floor:,.0f} µs (samples {', '.join(f'{us:,.0f}' for us in measured['floor_us'])})")
    print(f"{'server':9} {'rows/s':>10} {'CPU µs/req':>11} {'floor / CPU':>12}   runs (CPU µs/req)")
    cpu = {}
    for kind, loaded in measured["runs"].items():
        cpu[kind] = statistics.median(loaded.cpu_us)
        rows_s = statistics.median(run.rps for run in loaded.runs) * measured["rows"]
        print(f"{kind:9} {rows_s:>10,.0f} {cpu[kind]:>11,.0f} {floor / cpu[kind]:>12.0%}   "
              f"{', '.join(f'{us:,.0f}' for us in loaded.cpu_us)}")
    print(f"CPU per request, pod / pod-asgi: {cpu['pod'] / cpu['pod-asgi']:.2f}, bare / pod: "
          f"{cpu['bare'] / cpu['pod']:.2f} (the goal's 70 % of the floor leaves {floor / 0.7:,.0f} µs a request)")


def main() -> None:
    parser = model_arguments(__doc__, pairs=3)
    parser.add_argument("--rows", type=int, help="rows a request (default: the model's max_batch_size, a full batch)")
    parser.add_argument("--connections", type=int, default=FULL_BATCH_CONNECTIONS)
    args = parser.parse_args()
    state, specs = example_models(args)
    logs = Path(tempfile.mkdtemp(prefix="bench-bare-"))
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for spec in specs:
        rows = args.rows or spec.batching.max_batch_size
        print_model(spec.name, args.connections, bench_model(state, spec.name, rows, args.connections, args.pairs,
                                                             logs))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; logs in {logs}")


if __name__ == "__main__":
    main()
