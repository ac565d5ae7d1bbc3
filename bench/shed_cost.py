"""What a 503 costs the pod against an answer: POST /predict through mf_fast.FastPredict and the model's own
service (its batcher, its model), in process, with the request answered, then refused (the budget set below
any wait). The HTTP server's parsing and writing, the same for both, is not counted.

Usage, from a built Bento's src directory, with the model's serving venv (factory-state/runtime/<hash>):
    BENTOML_HOME=factory-state/bentoml .../bin/python /path/to/bench/shed_cost.py [--requests 20000] [--rounds 5]
Prints µs per request, answered and refused, A/B interleaved per round, and their medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import mf_serve
    from service import RESOLVED, ModelService

    service = ModelService()
    app = mf_serve.fast_predict(None, lambda: service.answer)
    example = RESOLVED["signature"]["inputs"]
    body = json.dumps({"inputs": [_row(example)]}).encode()
    timings = {"answered": [], "refused": []}
    budget = service.batcher.budget_s
    for _ in range(args.rounds):
        for kind in ("answered", "refused"):
            service.batcher.budget_s = budget if kind == "answered" else -1.0
            statuses, seconds = asyncio.run(_requests(app, body, args.requests))
            assert set(statuses) == {200 if kind == "answered" else 503}, statuses
            timings[kind].append(seconds / args.requests * 1e6)
            print(json.dumps({kind: round(timings[kind][-1], 1)}), flush=True)
    medians = {kind: round(statistics.median(values), 1) for kind, values in timings.items()}
    print(json.dumps({"median_us": medians, "ratio": round(medians["refused"] / medians["answered"], 2)}))


def _row(inputs: list[dict]) -> dict:
    values = {"double": 3.5, "float": 3.5, "long": 2, "integer": 2, "string": "PHV", "boolean": True}
    return {column["name"]: values[column["type"]] for column in inputs}


async def _requests(app, body: bytes, count: int) -> tuple[set, float]:
    scope = {"type": "http", "method": "POST", "path": "/predict",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    statuses = set()

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    for _ in range(200):  # warm: the batcher learns the runs are short and runs them on the loop
        await app(scope, receive, send)
    started = time.perf_counter()
    for _ in range(count):
        await app(scope, receive, send)
    return statuses, time.perf_counter() - started


if __name__ == "__main__":
    main()
