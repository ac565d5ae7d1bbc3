"""Render cost per model at 10 / 100 / 1,000 / 10,000 generated models (parse + validate + render + write).

Usage: python -m bench.render [--sizes 10,100,1000,10000] [--repeats 3]
Prints the median wall time per size, the time per model, and its ratio to the 10-model baseline
(flat cost per model = ratio near 1). Goal: 1,000 models in under 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from factory.loader import parse_catalog
from factory.render import render_catalog, write_tree


def generated_catalog(count: int) -> str:
    """`count` models the way teams write them: matrix entries over cities x segments x variants."""
    cities = max(1, count // 4)
    models = [{"matrix": {"city": list(range(cities)), "segment": ["TAXI", "PHV"], "traffic": ["aware", "unaware"]},
               "name": "match_probability_{city}_{segment}_traffic{traffic}", "version": 1,
               "endpoint": "probability", "parameters": ["{city}", "{segment}", "traffic{traffic}"]}]
    experiments = [{"name": f"rollout_{city}", "endpoint": "probability", "parameters": [str(city), "TAXI"],
                    "sticky_key": {"header": "X-User-Id"},
                    "variants": [{"model": f"match_probability_{city}_TAXI_trafficaware", "weight": 50},
                                 {"model": f"match_probability_{city}_TAXI_trafficunaware", "weight": 50}]}
                   for city in range(0, cities, 10)]
    return yaml.safe_dump({"models": models, "experiments": experiments}, sort_keys=False)


def time_once(text: str) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        catalog = parse_catalog(text)
        files = render_catalog(catalog)
        write_tree(files, Path(scratch) / "build")
        return time.perf_counter() - started, len(catalog.models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    baseline = None
    print(f"{'models':>7} {'median s':>9} {'ms/model':>9} {'vs 10':>6}  (median of {args.repeats})")
    for size in (int(part) for part in args.sizes.split(",")):
        text = generated_catalog(size)
        runs = [time_once(text) for _ in range(args.repeats)]
        seconds = statistics.median(run[0] for run in runs)
        models = runs[0][1]
        per_model = seconds / models * 1000
        baseline = baseline or per_model
        print(f"{models:>7} {seconds:>9.3f} {per_model:>9.3f} {per_model / baseline:>6.2f}")


if __name__ == "__main__":
    main()
