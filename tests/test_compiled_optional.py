"""A compiled form is checked where the registry model answered little: on rows with optional columns absent, from a
base row made up where no golden row holds every column (factory/probes.py complete_rows), and not at all on too
few distinct rows (factory/compiled.py MIN_DISTINCT_ROWS). Sweep A's sd_imputer_proba: its registry model raised on
11 of 12 sampled requests (rows without `b`), every golden row lacked `a`, so no probe ran, and its compiled form,
accepted on 8 identical rows, answered requests the registry model refuses. In-process models, fit in
milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from e2e_support.compiled_forms import registry_answers

from factory import probes
from factory.catalog import Compile
from factory.compiled import COMPILED_FILE, MIN_DISTINCT_ROWS, _too_few, decide

OPTIONAL = {"inputs": [{"type": "double", "name": "a", "required": False},
                       {"type": "long", "name": "b", "required": False},
                       {"type": "boolean", "name": "c", "required": True}]}
GOLDEN_ROW = {"b": 245243453663629, "c": False}  # the only row sweep A's registry model answered, 8 times


def _imputer_model():
    """Sweep A's train4.py, smaller: SimpleImputer + StandardScaler + LogisticRegression fit on a frame of a, b, c."""
    import pandas as pd
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(21)
    frame = pd.DataFrame({"a": rng.normal(0, 1, 300), "b": rng.integers(0, 50, 300).astype(float),
                          "c": (rng.random(300) < 0.3).astype(float)})
    target = (frame.a + frame.b / 25 + frame.c + rng.normal(0, 0.5, 300)) > 1.5
    frame.loc[rng.random(300) < 0.15, "a"] = np.nan
    return make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression()).fit(frame, target)


def _decide(model, signature: dict, rows: list[dict], tmp_path: Path, examples: tuple = ()):
    answer = registry_answers(model.predict_proba, signature)
    cases = [{"inputs": rows, "outputs": answer([{"inputs": rows}])[0]["outputs"]}]
    return decide(lambda: model, {"loader": "cloudpickle", "predict_fn": "predict_proba"}, signature, cases,
                  Compile(), tmp_path / COMPILED_FILE, answer, examples)


@pytest.mark.parametrize("base, complete", [
    ([{"a": 0.5, "b": 3, "c": True}, GOLDEN_ROW], [[0.5, 3, True]]),  # a complete row: as before
    ([GOLDEN_ROW], [[1.0, 245243453663629, False]]),  # no row holds `a`: a plain double
    ([GOLDEN_ROW, {"a": -2.5, "c": True}], [[-2.5, 245243453663629, False]]),  # each gap from another row
    ([{"c": True}], [[1.0, 1, True]]),
    ([], []),
])
def test_a_base_row_is_made_where_no_golden_row_holds_every_column(base, complete) -> None:
    columns = [(spec["name"], spec["type"]) for spec in OPTIONAL["inputs"]]
    assert probes.complete_rows(base, columns) == complete


def test_extreme_rows_are_made_where_no_golden_row_holds_every_column() -> None:
    rows = probes.extremes(OPTIONAL, [GOLDEN_ROW] * 8)
    assert [row["a"] for row in rows[:7]] == [1e308, -1e308, 3.5e38, -3.5e38, 5e-324, -0.0, None]
    assert rows[7:] == [{"a": 1.0, "b": value, "c": False} for value in (2**63 - 1, -(2**63), 2**53 + 1, None)]
    dated = {"inputs": [*OPTIONAL["inputs"], {"type": "datetime", "name": "at", "required": False}]}
    assert probes.extremes(dated, [GOLDEN_ROW]) == []  # no value for a datetime column no row holds


def test_a_compiled_form_answering_rows_missing_a_column_the_registry_model_needs_serves_natively(
        tmp_path: Path) -> None:
    """The registry model raises on any request without `b` (its frame lacks the column it was fit on); the
    compiled form imputes it and answers: {"c": false} was 200 compiled, 500 model_error native."""
    decision = _decide(_imputer_model(), OPTIONAL, [GOLDEN_ROW] * 8, tmp_path)
    assert decision.path == "native"
    assert decision.reason.startswith(
        "no exact compiled form: ONNX float64 answers requests missing 'b', which the registry model raises on "
        "(ValueError: The feature names should match those that were passed during fit. Feature names seen at fit "
        "time, yet now missing: - b), at input {\"a\": 1.0, \"b\": null, \"c\": false}: compiled ["), decision.reason
    assert ("]; mark 'b' required in the model's signature, or have the model take rows without it; ONNX float32 "
            in decision.reason)


@pytest.mark.parametrize("signature, rows, reason", [
    (OPTIONAL, [GOLDEN_ROW] * 8, "agrees on only 1 distinct row the registry model answered, too few to call it "
                                 "exact (at least 8): fix what the registry model raises on (the build's warning says "
                                 "what), or log the model with an input_example, whose rows and rows drawn like them "
                                 "are checked too"),
    (OPTIONAL, [{"b": index, "c": True} for index in range(7)] + [{"a": None, "b": 0, "c": True}],
     "agrees on only 7 distinct rows the registry model answered, too few to call it exact (at least 8): fix what "
     "the registry model raises on (the build's warning says what), or log the model with an input_example, whose "
     "rows and rows drawn like them are checked too"),  # a missing value is the same request as its absence
    (OPTIONAL, [{"b": index, "c": True} for index in range(MIN_DISTINCT_ROWS)], None),
    ({"inputs": [{"type": "boolean", "name": "c", "required": True}]}, [{"c": True}, {"c": False}] * 4, None),
    ({"inputs": [{"type": "boolean", "name": "c", "required": True}]}, [{"c": True}] * 8,
     "agrees on only 1 distinct row the registry model answered, too few to call it exact (at least 8): fix what "
     "the registry model raises on (the build's warning says what), or log the model with an input_example, whose "
     "rows and rows drawn like them are checked too"),
    ({"inputs": [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 2]}}]},
     [[1.0, 2.0]] * 3 + [[2.0, 1.0]], "agrees on only 2 distinct rows the registry model answered, too few to call "
     "it exact (at least 8): fix what the registry model raises on (the build's warning says what), or log the model "
     "with an input_example, whose rows and rows drawn like them are checked too"),
])
def test_too_few_distinct_rows_answered_prove_nothing(signature, rows, reason) -> None:
    assert _too_few(signature, rows) == reason


def test_a_compiled_form_checked_on_too_few_rows_serves_natively(tmp_path: Path) -> None:
    """Every column given, so nothing the registry model raises on: 8 identical golden rows and the extreme rows
    agree, and still prove too little."""
    required = {"inputs": [{**spec, "required": True} for spec in OPTIONAL["inputs"]]}
    row = {"a": 0.5, **GOLDEN_ROW}
    decision = _decide(_imputer_model(), required, [row] * 8, tmp_path)
    assert decision.reason.startswith(
        "no exact compiled form: ONNX float64 agrees on only 1 distinct row the registry model answered, too few to "
        "call it exact (at least 8): fix what the registry model raises on (the build's warning says what), or log "
        "the model with an input_example, whose rows and rows drawn like them are checked too; ONNX float32 "
        "answers an extreme input"), decision.reason  # float32 reads 1e308 as infinity
    with_example = _decide(_imputer_model(), required, [row] * 8, tmp_path, [row])
    assert with_example.compiled and "and 1024 rows around its logged input example" in with_example.reason
