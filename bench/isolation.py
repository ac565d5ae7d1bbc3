"""What batch isolation costs when nothing raises, side by side in one run (in process, no HTTP).

Usage: python -m bench.isolation [--rows 32] [--repeats 2000]
Compares, on one merged batch of a real sklearn model: the model run alone (`Predictor._run`), the
same batch through the isolating path (`Predictor._isolated`: try, bisect only on failure, non-finite
check), and the per-response check `mf_http.ErrorShape` adds to a 200 (a substring scan of its body).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from factory.runtime import BENTO_TEMPLATES

sys.path.insert(0, str(BENTO_TEMPLATES))
import mf_flavors  # noqa: E402
import mf_http  # noqa: E402
import mf_runtime  # noqa: E402

INPUTS = [{"type": "double", "name": f"x{index}", "required": True} for index in range(4)]


def _predictor() -> mf_runtime.Predictor:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, len(INPUTS)))
    model = LogisticRegression().fit(features, features[:, 0] > 0)
    predictor = mf_runtime.Predictor.__new__(mf_runtime.Predictor)
    predictor.inputs, predictor.tensor, predictor.allow_non_finite = INPUTS, False, False
    predictor.model = mf_flavors.LoadedModel(model.predict_proba, "array")
    return predictor


def _per_call_us(functions: list, repeats: int, rounds: int = 9) -> list[float]:
    """Median µs per call of each function; rounds interleave them so machine noise hits all alike."""
    samples: list[list[float]] = [[] for _ in functions]
    for _ in range(rounds):
        for function, kept in zip(functions, samples):
            started = time.perf_counter()
            for _ in range(repeats // rounds):
                function()
            kept.append((time.perf_counter() - started) / (repeats // rounds) * 1e6)
    return [statistics.median(kept) for kept in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    predictor = _predictor()
    records = [{spec["name"]: float(i + j) / 10 for j, spec in enumerate(INPUTS)} for i in range(args.rows)]
    body = json.dumps(predictor._isolated(records)).encode()
    plain, isolated = _per_call_us([lambda: predictor._run(records), lambda: predictor._isolated(records)],
                                   args.repeats)
    scan, = _per_call_us([lambda: mf_http._rewrite(200, body)], args.repeats)
    print(f"one batch of {args.rows} rows, median of 9 interleaved rounds, {args.repeats} calls each (µs per batch)")
    print(f"{'model run alone':<34} {plain:>9.1f}")
    print(f"{'isolating path (nothing raises)':<34} {isolated:>9.1f}  x{isolated / plain:.3f}")
    print(f"{'ErrorShape check of a 200 body':<34} {scan:>9.2f}  ({scan / plain * 100:.2f} % of the model run)")


if __name__ == "__main__":
    main()
