"""Does a model answer what the registry model answered? The one comparison of predictions: `factory build`'s
(a compiled form against the registry model) and `factory test`'s golden check (the served model against the
answers recorded at build time, fuzz_report.golden_problem).

Outputs are JSON values as served: numbers, strings, booleans, None (a NaN/infinity, nulled), or
lists and objects of them (a row of class probabilities). A row's floats agree within `rtol` relative to the
largest magnitude in that row's output (a norm-wise relative error: 1e-90 against 0 beside a
probability of 1.0 is no difference, 0.5 against 0.6 is) or within `atol`; classes, strings,
booleans and integers agree only when equal. Read back from JSON (`json_numbers`), an integer and a float
are the same number written two ways and compare as floats; in the build, where both sides are the
models' own Python values, a class answered as a float is another answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Comparison:
    """The worst disagreement over all rows (relative error; inf where values cannot be compared as
    numbers) and whether every row agrees within the tolerance."""

    agrees: bool
    relative_error: float
    row: int = 0
    expected: Any = None
    actual: Any = None

    def describe(self, rows: list[Any]) -> str:
        what = (f"max relative error {self.relative_error:.2g}" if math.isfinite(self.relative_error)
                else "a different value")
        return (f"{what} at input {json.dumps(rows[self.row], sort_keys=True)[:200]}: registry model "
                f"{_short(self.expected)}, compiled {_short(self.actual)}")


def compare(expected: list[Any], actual: list[Any], rtol: float, atol: float,
            json_numbers: bool = False) -> Comparison:
    """Row by row; the reported row is the worst failing one, or the worst of all when every row agrees."""
    if len(expected) != len(actual):
        return Comparison(False, math.inf, 0, f"{len(expected)} outputs", f"{len(actual)} outputs")
    worst = Comparison(True, 0.0)
    for row, (want, got) in enumerate(zip(expected, actual)):
        scale = max(_magnitude(want), _magnitude(got))
        agrees = _agrees(want, got, max(atol, rtol * scale), json_numbers)
        error = _error(want, got, scale, json_numbers)
        if (worst.agrees and not agrees) or (agrees == worst.agrees and error > worst.relative_error):
            worst = Comparison(worst.agrees and agrees, error, row, want, got)
    return worst


def _magnitude(value: Any) -> float:
    if isinstance(value, (list, dict)):
        return max(map(_magnitude, value.values() if isinstance(value, dict) else value), default=0.0)
    return abs(value) if isinstance(value, float) and math.isfinite(value) else 0.0


def _numbers(want: Any, got: Any, json_numbers: bool) -> bool:
    """Both compare as floats: both floats, or (read from JSON) numbers not both integers."""
    kinds = {type(want), type(got)}
    return kinds == {float} or (json_numbers and kinds <= {int, float} and kinds != {int})


def _agrees(want: Any, got: Any, tolerance: float, json_numbers: bool) -> bool:
    if isinstance(want, list) and isinstance(got, list):
        return len(want) == len(got) and all(_agrees(w, g, tolerance, json_numbers) for w, g in zip(want, got))
    if isinstance(want, dict) and isinstance(got, dict):
        return want.keys() == got.keys() and all(_agrees(want[key], got[key], tolerance, json_numbers)
                                                 for key in want)
    if _numbers(want, got, json_numbers):
        return abs(want - got) <= tolerance
    return type(want) is type(got) and want == got


def _error(want: Any, got: Any, scale: float, json_numbers: bool) -> float:
    """Error of the worst element relative to the row's scale; inf where types, shapes or classes differ."""
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return max((_error(w, g, scale, json_numbers) for w, g in zip(want, got)), default=0.0)
    if isinstance(want, dict) and isinstance(got, dict) and want.keys() == got.keys():
        return max((_error(want[key], got[key], scale, json_numbers) for key in want), default=0.0)
    if type(want) is type(got) and want == got:
        return 0.0
    if _numbers(want, got, json_numbers) and math.isfinite(want - got) and scale > 0:
        return abs(want - got) / scale
    return math.inf


def _short(value: Any) -> str:
    return json.dumps(value)[:80]
