"""Render cost per model at 10 / 100 / 1,000 / 10,000 generated models (parse + validate + render + write).

Usage: python -m bench.render [--sizes 12,100,1000,10000] [--repeats 3] [--scratch DIR]
Prints median wall times per size: parse+validate+render (CPU) and writing the tree, the total per
model, and its ratio to the smallest size (flat cost per model = ratio near 1). Writes go to
--scratch (default /dev/shm, a tmpfs) so the shared VM's disk, whose metadata speed varied 10x
between runs here, does not drown the factory's own cost; pass --scratch /tmp to include it.
Goal: 1,000 models in under 2 s.
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


def time_once(text: str, scratch: str) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory(dir=scratch) as out:
        started = time.perf_counter()
        catalog = parse_catalog(text)
        files = render_catalog(catalog)
        rendered = time.perf_counter()
        write_tree(files, Path(out) / "build")
        return rendered - started, time.perf_counter() - rendered, len(catalog.models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12,100,1000,10000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scratch", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    baseline = None
    print(f"writing to {args.scratch or tempfile.gettempdir()}; medians of {args.repeats}")
    print(f"{'models':>7} {'render s':>9} {'write s':>8} {'total s':>8} {'ms/model':>9} {'vs first':>8}")
    for size in (int(part) for part in args.sizes.split(",")):
        text = generated_catalog(size)
        runs = [time_once(text, args.scratch) for _ in range(args.repeats)]
        render_s = statistics.median(run[0] for run in runs)
        write_s = statistics.median(run[1] for run in runs)
        total = statistics.median(run[0] + run[1] for run in runs)
        models = runs[0][2]
        per_model = total / models * 1000
        baseline = baseline or per_model
        print(f"{models:>7} {render_s:>9.3f} {write_s:>8.3f} {total:>8.3f} {per_model:>9.3f} {per_model / baseline:>8.2f}")


if __name__ == "__main__":
    main()
