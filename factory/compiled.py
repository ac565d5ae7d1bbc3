"""`factory build`'s compile step: serve a compiled (ONNX) form of the model, exact or not at all.

The candidate runs through the very code the Bento serves with (`mf_runtime.Predictor` on the
`onnx` loader of `mf_flavors`) on the golden requests, and must answer what the registry model
answered there (`mlflow.pyfunc`, recorded at build time) within the model's `compile` tolerance; then
on rows near the constants it compares columns with, at its encoders' categories, on the model's logged input
example and rows drawn around it (`factory/probes.py`), answered by the registry model through `answer`; then on
rows of extreme values (a missing optional value among them), where it must refuse exactly what the registry model
raises on (`factory/guard.py`); a check that saw too few distinct rows the registry model answered proves nothing
(MIN_DISTINCT_ROWS); and float32 arithmetic that cannot hold the tolerance is refused (`factory/precision.py`).
Otherwise the model serves natively and the decision says why, in one line. The probe rows and the registry model's
answers come back in the decision, for golden.json.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from factory import precision, probes
from factory.catalog import Compile
from factory.exactness import Comparison, compare
from factory.fuzz_values import NESTED_TYPES
from factory.golden import Answer
from factory.onnx_convert import Candidate, NotConvertible, candidates
from factory.registry import ONNX_MODEL
from factory.runtime import bento_module

COMPILED_FILE = "model.onnx"
# What the compiled form's serving venv holds besides the runtime's own pins (factory/runtime.py).
COMPILED_PACKAGES = ("onnxruntime",)
PROBES_PER_REQUEST = 64
# Distinct rows a compiled form must be seen to agree on (golden and probe rows the registry model answered; fewer
# where the signature admits fewer): twelve one-row golden requests a model answers hold 9-11 distinct rows (the
# sampler repeats some; measured on six signatures), so 8 passes every model answering them, and fails one whose
# registry model answered a single request of 8 identical rows (sweep A: accepted so, it answered rows the registry
# model raises on).
MIN_DISTINCT_ROWS = 8
REFUSED = {"refused": "the model raises on this row"}  # what either side answers to a row it raises on


@dataclass(frozen=True)
class Decision:
    path: str  # "compiled" or "native" (factory/build.py makes it "pyfunc" where MLflow's pyfunc loader serves)
    reason: str  # one line, shown in the build output and kept in the build record
    flavor: dict  # the compiled loader for resolved.json; {} when native
    probes: tuple = ()  # (row, the registry model's output) pairs the last candidate was checked on

    @property
    def compiled(self) -> bool:
        return self.path == "compiled"


def decide(load_native: Callable[[], Any], flavor: dict, signature: dict, cases: list[dict], settings: Compile,
           target: Path, answer: Optional[Answer] = None, examples: Sequence[Any] = ()) -> Decision:
    """Write `target` (the ONNX file beside the Bento's service) and answer "compiled" only when it is exact:
    on the golden `cases`, then (when `answer` is given) on the logged input's `examples` and rows near the
    candidate's split thresholds."""
    target.unlink(missing_ok=True)
    if not settings.enabled:
        return _native("compile.enabled is false in models.yaml")
    nested = [(spec.get("name", f"c{index}"), spec["type"]) for index, spec in enumerate(signature["inputs"])
              if spec.get("type") in NESTED_TYPES]
    if nested:
        name, kind = nested[0]
        return _native(f"input column {name!r} is {'a map' if kind == 'map' else 'an ' + kind}: a compiled form takes flat numeric "
                       "columns only, so MLflow's pyfunc serves it")
    if signature.get("params"):
        return _native("the signature has inference params: only MLflow's pyfunc takes them")
    if flavor["loader"] == "pyfunc" and flavor.get("model_class") != ONNX_MODEL:
        return _native("an mlflow.pyfunc model has no ONNX converter (only sklearn, LightGBM and XGBoost do, and an "
                       "mlflow.onnx model is one)")
    if not cases:
        return _native("no golden predictions to check a compiled form against")
    try:
        model = load_native()
    except Exception as exc:  # whatever the flavor's library raises: the native path reports it on its own
        return _native(f"the model did not load for conversion ({type(exc).__name__}: {str(exc)[:150]})")
    failures, checked = [], ()
    for candidate in candidates(model, flavor, signature):
        if isinstance(candidate, NotConvertible):
            failures.append(str(candidate))
            continue
        decision = _check(candidate, flavor, signature, cases, settings, target, answer, list(examples))
        if decision.compiled:
            return decision
        failures.append(decision.reason)
        checked = decision.probes or checked
    target.unlink(missing_ok=True)
    return Decision("native", "no exact compiled form: " + "; ".join(failures), {}, checked)


def compiled_flavor(candidate: Candidate, loader: str, answer: Any) -> dict:
    """resolved.json's flavor for `candidate` (its ONNX file COMPILED_FILE beside the service), converted from a model
    of `loader` whose registry form answers a row with `answer`."""
    # The registry model answers one value per row (a regression, a class): ONNX gives [rows, 1].
    answers = ({"outputs": list(candidate.outputs), "flatten": candidate.flat,
                **({"maps": {name: labels for name, labels in candidate.maps}} if candidate.maps else {})}
               if candidate.outputs else {"output": candidate.output, "flatten": not isinstance(answer, list)})
    return {"loader": "onnx", "model_file": COMPILED_FILE, "compiled_from": loader, "precision": candidate.precision,
            "feeds": candidate.feeds, **answers, **({"guard": candidate.guard} if candidate.guard else {})}


def _check(candidate: Candidate, flavor: dict, signature: dict, cases: list[dict], settings: Compile,
           target: Path, answer: Optional[Answer], examples: list[Any]) -> Decision:
    rows = [row for case in cases for row in case["inputs"]]
    expected = [output for case in cases for output in case["outputs"]]
    compiled = compiled_flavor(candidate, flavor["loader"], expected[0])
    target.write_bytes(candidate.onnx)
    label = candidate.label
    # The registry's own graph computes its kernels in float32 on both sides: no conversion error to bound.
    kernels = precision.kernels(candidate.onnx, expected[0]) if candidate.converted else []
    # Float32 kernels' error decides the rtol they need, so it is measured on every row before any advice: rows are
    # compared up to KERNELS_RTOL_MAX, and a row beyond it fails, reported against the configured rtol.
    loosest = max(settings.rtol, precision.KERNELS_RTOL_MAX)
    judged = settings.model_copy(update={"rtol": loosest}) if kernels else settings
    try:
        predictor = _runtime().Predictor("", {"signature": signature, "flavor": {**compiled, "model_file": str(target)}})
        actual = bento_module("mf_inputs").nulled(predictor.run(rows))
    except Exception as exc:  # onnxruntime refusing the graph, or feeds it cannot take
        return _native(f"{label} does not run: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    result = compare(expected, actual, judged.rtol, judged.atol)
    if not result.agrees:
        return _native(f"{label} differs from the registry model beyond rtol {settings.rtol:g}, atol "
                       f"{settings.atol:g}: {result.describe(rows)}")
    probed, asked, compared, counts = _probe(predictor, candidate, signature, rows, answer, examples, judged)
    if not probed.agrees:
        return Decision("native", f"{label} differs from the registry model beyond rtol {settings.rtol:g}, atol "
                                  f"{settings.atol:g} {' or '.join(where for where, _, _ in counts)} (the golden rows "
                                  f"agree): {probed.describe([row for row, _ in compared])}", {}, asked)
    extreme, outcome, raised = _extremes(predictor, signature, examples + rows, answer, judged)
    if not outcome.agrees:
        return Decision("native", f"{label} {_refused_otherwise(extreme, outcome, raised)}", {}, asked)
    if extreme:
        counts.append(("", "of extreme values", len(extreme)))
    too_few = _too_few(signature, rows + [row for row, _ in compared])
    if too_few:
        return Decision("native", f"{label} {too_few}", {}, asked)
    leaves = precision.leaves(candidate.onnx, candidate.precision, flavor["loader"],
                              expected + [output for _, output in compared], settings)
    if leaves:
        return Decision("native", f"{label}: {leaves}", {}, asked)
    result = max(result, probed, outcome, key=lambda comparison: comparison.relative_error)
    kernels_reason = precision.kernels_reason(kernels, result.relative_error, settings)
    if kernels_reason:
        return Decision("native", f"{label}: {kernels_reason}", {}, asked)
    checked = " and ".join([f"{len(rows)} golden rows", *(f"{count} row{'' if count == 1 else 's'} {of}"
                                                         for _, of, count in counts)])
    return Decision("compiled", f"{label} reproduces the registry model on {checked} (max relative error "
                                f"{result.relative_error:.1g}, rtol {settings.rtol:g})", compiled, asked)


def _refused_otherwise(rows: list, outcome: Comparison, raised: list[Optional[str]]) -> str:
    """What the candidate answered otherwise than the registry model on the extreme `rows`: a request missing an
    optional column the registry model raises on (it needs the column its signature calls optional) is named so."""
    row = rows[outcome.row]
    missing = [name for name, value in row.items() if value is None] if isinstance(row, dict) else []
    if not missing or outcome.expected != REFUSED:
        return (f"answers an extreme input otherwise than the registry model (the golden rows agree): "
                f"{outcome.describe(rows)}")
    return (f"answers requests missing {missing[0]!r}, which the registry model raises on ({raised[outcome.row]}), at "
            f"input {json.dumps(row, sort_keys=True)[:200]}: compiled {json.dumps(outcome.actual)[:80]}; mark "
            f"{missing[0]!r} required in the model's signature, or have the model take rows without it")


def _too_few(signature: dict, answered: list) -> Optional[str]:
    """Why the `answered` rows (golden and probe rows the registry model answered) are too few to call a candidate
    exact, or None."""
    distinct = _distinct(answered)
    if distinct >= min(MIN_DISTINCT_ROWS, _possible_rows(signature)):
        return None
    return (f"agrees on only {distinct} distinct row{'' if distinct == 1 else 's'} the registry model answered, too "
            f"few to call it exact (at least {MIN_DISTINCT_ROWS}): fix what the registry model raises on (the build's "
            "warning says what), or log the model with an input_example, whose rows and rows drawn like them are "
            "checked too")


def _distinct(rows: list) -> int:
    """How many different requests `rows` make: a missing optional value is the same request as its absence."""
    return len({json.dumps({key: value for key, value in row.items() if value is not None} if isinstance(row, dict)
                           else row, sort_keys=True) for row in rows})


def _possible_rows(signature: dict) -> float:
    """How many distinct rows the signature admits at least: 2 per column when all are booleans, else unbounded."""
    kinds = [spec.get("type") for spec in signature["inputs"]]
    return 2 ** len(kinds) if all(kind == "boolean" for kind in kinds) else math.inf


def _probe(predictor: Any, candidate: Candidate, signature: dict, golden_rows: list, answer: Optional[Answer],
           examples: list, settings: Compile) -> tuple[Comparison, tuple, tuple, list[tuple[str, str, int]]]:
    """The candidate against the registry model on its logged input example, near its split thresholds and
    categories, and on rows around the example: the comparison, the (row, registry output) pairs for golden.json
    (all but the rows around the example), the pairs compared, and (where, whose rows, how many) per kind asked."""
    near = probes.rows(candidate.onnx, candidate.feeds, signature, examples + golden_rows)
    asked_example, asked_near, asked_around = _asked(answer, [examples, near, probes.around(signature, examples)])
    asked = tuple(asked_near + asked_example)
    compared = asked + tuple(asked_around)
    near_what = probes.described(candidate.onnx, candidate.feeds, signature)
    counts = [(where, of, len(found)) for where, of, found in (
        (near_what, near_what, asked_near),
        ("on its logged input example", "of its logged input example", asked_example),
        ("around its logged input example", "around its logged input example", asked_around)) if found]
    if not compared:
        return Comparison(True, 0.0), asked, compared, counts
    try:
        actual = bento_module("mf_inputs").nulled(predictor.run([row for row, _ in compared]))
    except Exception as exc:  # a probe value the compiled graph cannot take is a reason not to serve it
        failed = Comparison(False, float("inf"), 0, "an answer", f"{type(exc).__name__}: {str(exc)[:100]}")
        return failed, asked, compared, counts
    return compare([output for _, output in compared], actual, settings.rtol, settings.atol), asked, compared, counts


def _extremes(predictor: Any, signature: dict, base: list, answer: Optional[Answer],
              settings: Compile) -> tuple[list, Comparison, list[Optional[str]]]:
    """The candidate against the registry model on rows holding one extreme value each (probes.extremes), one row
    per request: where the registry model raises, the compiled form must refuse too (its guard), and answer alike
    elsewhere. The rows, the comparison, and per row what the registry model raised (None where it answered)."""
    extreme = probes.extremes(signature, base) if answer is not None else []
    if not extreme:
        return [], Comparison(True, 0.0), []
    nulled = bento_module("mf_inputs").nulled
    with warnings.catch_warnings():  # numpy's overflow warnings, on both sides: the point of these rows
        warnings.simplefilter("ignore")
        answered = answer([{"inputs": [row]} for row in extreme])
        actual = [_served(predictor, row) for row in extreme]
    expected = [nulled(reply["outputs"][0]) if "outputs" in reply else REFUSED for reply in answered]
    raised = [None if "outputs" in reply else reply.get("error") for reply in answered]
    return extreme, compare(expected, actual, settings.rtol, settings.atol), raised


def _served(predictor: Any, row: Any) -> Any:
    try:
        return bento_module("mf_inputs").nulled(predictor.run([row])[0])
    except Exception:  # the guard's refusal, or the graph failing on that value: a refusal either way
        return REFUSED


def _asked(answer: Optional[Answer], groups: list[list[Any]]) -> list[list[tuple[Any, Any]]]:
    """Per group of rows, (row, the registry model's output) for those it answers (a request it raises on is left
    out), asked in one call."""
    requests = [(group, {"inputs": rows[start:start + PROBES_PER_REQUEST]}) for group, rows in enumerate(groups)
                for start in range(0, len(rows), PROBES_PER_REQUEST)]
    found: list[list[tuple[Any, Any]]] = [[] for _ in groups]
    if answer is None or not requests:
        return found
    nulled = bento_module("mf_inputs").nulled
    for (group, request), answered in zip(requests, answer([request for _, request in requests])):
        found[group] += [(row, nulled(output)) for row, output in zip(request["inputs"], answered.get("outputs", ()))]
    return found


def _native(reason: str) -> Decision:
    return Decision("native", reason, {})


@functools.cache
def _runtime() -> Any:
    """The Bento's runtime modules, loaded in the order their own imports need."""
    for name in ("mf_http", "mf_inputs", "mf_flavors", "mf_schema"):
        bento_module(name)
    return bento_module("mf_runtime")
