"""`factory up`'s ready-to-paste curl lines: a body from each model's golden rows, whatever its signature holds."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from factory.loader import load_catalog
from factory.state import StateDir
from factory.up import example_commands

CATALOG = """\
models:
  - {name: first, version: 1, endpoint: score}
"""


@pytest.mark.parametrize("rows, sent", [
    # the shortest row with every value present
    ([{"a": 1.5, "b": None}, {"a": 10.25, "b": 2.0}, {"a": 1.0, "b": 2.0}], {"a": 1.0, "b": 2.0}),
    ([[0.5, 1.5, -2.0], [1.0, 2.0, 3.0]], [1.0, 2.0, 3.0]),  # a tensor's rows: lists (crashed `factory up`)
    ([[[1, 2], [3, 4]]], [[1, 2], [3, 4]]),  # a tensor of rank 3
    (["some longer text", "short"], "short"),  # one unnamed column: the value itself
    ([["TAXI", None], ["PHV", 3]], ["PHV", 3]),  # unnamed columns in order, an optional one missing
    ([{"a": None}, {"a": None, "b": 1}], {"a": None}),  # every row misses a value: the shortest still shows the API
])
def test_the_curl_example_sends_a_golden_row_as_the_model_takes_it(tmp_path: Path, rows: list, sent) -> None:
    (tmp_path / "models.yaml").write_text(CATALOG)
    state = StateDir(tmp_path / "state")
    state.golden_path("first").parent.mkdir(parents=True)
    state.golden_path("first").write_text(json.dumps([{"inputs": rows[:1], "outputs": [0]},
                                                      {"inputs": rows[1:], "outputs": [0] * (len(rows) - 1)}]))
    lines = example_commands(load_catalog(tmp_path / "models.yaml"), "http://127.0.0.1:8000", state)
    assert lines[0] == "# /score -> first"
    command = shlex.split(lines[1])
    assert command[:5] == ["curl", "-si", "-X", "POST", "http://127.0.0.1:8000/score"]
    assert json.loads(command[-1]) == {"inputs": [sent]}
