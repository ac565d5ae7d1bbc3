"""Does a model answer what the registry model answered? The one comparison of predictions: `factory build`'s
(a compiled form against the registry model) and `factory test`'s golden check (the served model against the
answers recorded at build time, fuzz_report.golden_problem).

Outputs are JSON values as served: numbers, strings, booleans, None (a NaN/infinity, nulled), or
lists and objects of them (a row of class probabilities). Floats agree within `rtol` relative to their own
magnitude (at least ROW_FLOOR of the row's largest), or within `atol`; in a row of probabilities (the registry's
floats of the row all in [0, 1], summing to 1) relative to the row's largest (a norm-wise relative error: 1e-90
against 0 beside a probability of 1.0 is no difference, 0.5 against 0.6 is). Norm-wise everywhere hid a wrong
output beside a large one: a KNN regressor answering [y, 1e9 + y] served y off by 12 % as "max relative error
2e-08" (session 15's stranger sweep). Classes, strings, booleans and integers agree only when equal. Read back
from JSON (`json_numbers`), an integer and a float are the same number written two ways and compare as floats;
in the build, where both sides are the models' own Python values, a class answered as a float is another answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterator

# How far from 1 a registry model's probabilities may sum (float32 forests and boosters sum to within ~1e-7).
PROBABILITY_SUM = 1e-5
# A number under this share of its row's largest is compared relative to that share: with rtol 1e-6 that is 1e-15
# of the largest, a double's rounding of it, so the noise of an output next to a far larger one is no difference.
ROW_FLOOR = 1e-9


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
        largest = max(_magnitude(want), _magnitude(got))
        floor = largest if _probabilities(want) else ROW_FLOOR * largest
        agrees = _agrees(want, got, rtol, atol, floor, json_numbers)
        error = _error(want, got, floor, json_numbers)
        if (worst.agrees and not agrees) or (agrees == worst.agrees and error > worst.relative_error):
            worst = Comparison(worst.agrees and agrees, error, row, want, got)
    return worst


def _probabilities(value: Any) -> bool:
    """A row of class probabilities: two or more floats, each in [0, 1], that sum to 1."""
    floats = list(_floats(value))
    return len(floats) > 1 and all(0.0 <= f <= 1.0 for f in floats) and abs(math.fsum(floats) - 1.0) <= PROBABILITY_SUM


def _floats(value: Any) -> Iterator[float]:
    if isinstance(value, (list, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _floats(item)
    elif isinstance(value, float):
        yield value


def _magnitude(value: Any) -> float:
    """The largest finite float anywhere in `value`, unsigned; 0 without one."""
    return max((abs(item) for item in _floats(value) if math.isfinite(item)), default=0.0)


def _numbers(want: Any, got: Any, json_numbers: bool) -> bool:
    """Both compare as floats: both floats, or (read from JSON) numbers not both integers."""
    kinds = {type(want), type(got)}
    return kinds == {float} or (json_numbers and kinds <= {int, float} and kinds != {int})


def _agrees(want: Any, got: Any, rtol: float, atol: float, floor: float, json_numbers: bool) -> bool:
    """Within max(atol, rtol × the number's scale (_scale))."""
    if isinstance(want, list) and isinstance(got, list):
        return len(want) == len(got) and all(_agrees(w, g, rtol, atol, floor, json_numbers)
                                             for w, g in zip(want, got))
    if isinstance(want, dict) and isinstance(got, dict):
        want, got = _keyed(want), _keyed(got)
        return want.keys() == got.keys() and all(_agrees(want[key], got[key], rtol, atol, floor, json_numbers)
                                                 for key in want)
    if _numbers(want, got, json_numbers):
        return abs(want - got) <= max(atol, rtol * _scale(want, got, floor))
    return type(want) is type(got) and want == got


def _error(want: Any, got: Any, floor: float, json_numbers: bool) -> float:
    """Error of the worst element relative to its scale (_scale); inf where types, shapes or classes differ."""
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return max((_error(w, g, floor, json_numbers) for w, g in zip(want, got)), default=0.0)
    if isinstance(want, dict) and isinstance(got, dict):
        want, got = _keyed(want), _keyed(got)
        if want.keys() == got.keys():
            return max((_error(want[key], got[key], floor, json_numbers) for key in want), default=0.0)
    if type(want) is type(got) and want == got:
        return 0.0
    if not _numbers(want, got, json_numbers) or not math.isfinite(want - got):
        return math.inf
    scale = _scale(want, got, floor)
    return abs(want - got) / scale if scale > 0 else math.inf


def _keyed(mapping: dict) -> dict:
    """An object's keys as JSON writes them: a ZipMap's class 0, answered here as an int, is "0" in a reply read back
    from JSON (a model answered in its own venv), and both are the same answer to a client."""
    return {key if isinstance(key, str) else json.dumps(key): value for key, value in mapping.items()}


def _scale(want: float, got: float, floor: float) -> float:
    """What a number's error is relative to: its own magnitude, at least `floor` (the row's largest for
    probabilities; ROW_FLOOR of it otherwise)."""
    return max(_magnitude(float(want)), _magnitude(float(got)), floor)


def _short(value: Any) -> str:
    return json.dumps(value)[:80]
