"""A signature of one-column tensors is served as columns and fed as those tensors (factory/tensor_columns.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from factory.tensor_columns import COLUMN_TYPES, as_columns, tensor_inputs


def _tensor(name, dtype: str = "float32", shape: list | None = None) -> dict:
    return {"type": "tensor", "name": name,
            "tensor-spec": {"dtype": dtype, "shape": [-1, 1] if shape is None else shape}}


def test_named_one_column_tensors_are_columns_fed_as_those_tensors() -> None:
    signature = {"inputs": [_tensor("city", "object"), _tensor("distance"), _tensor("hour", "int64"),
                            _tensor("vip", "bool"), _tensor("zone", "str")],
                 "outputs": [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}],
                 "params": [{"name": "k", "type": "long", "default": 3, "shape": None}]}
    columns, layout = as_columns(signature)
    assert columns == {**signature, "inputs": [
        {"type": "string", "name": "city", "required": True}, {"type": "float", "name": "distance", "required": True},
        {"type": "long", "name": "hour", "required": True}, {"type": "boolean", "name": "vip", "required": True},
        {"type": "string", "name": "zone", "required": True}]}
    assert layout == [["city", "object", ["city"]], ["distance", "float32", ["distance"]], ["hour", "int64", ["hour"]],
                      ["vip", "bool", ["vip"]], ["zone", "str", ["zone"]]]


@pytest.mark.parametrize("dtype", ["object", "str"])
def test_one_string_tensor_is_a_string_column(dtype: str) -> None:
    """A text model's graph takes one [None, 1] string input; a tensor of strings is served as no tensor."""
    assert as_columns({"inputs": [_tensor("review", dtype)], "outputs": None}) == (
        {"inputs": [{"type": "string", "name": "review", "required": True}], "outputs": None},
        [["review", dtype, ["review"]]])


@pytest.mark.parametrize("inputs", [
    [_tensor("x", shape=[-1, 3])],  # one tensor: served as a tensor
    [_tensor("a")],  # one number column alone is a tensor as MLflow serves it
    [_tensor("a"), _tensor("b", shape=[-1])],  # 1-D: MLflow's pyfunc feeds a frame's columns so
    [_tensor("a"), _tensor("b", shape=[-1, 2])],
    [_tensor("a"), _tensor("b", shape=[3, 1])],
    [_tensor("a"), _tensor("b", "float16")],
    [_tensor("a"), _tensor(None)],
    [_tensor("a"), {"type": "double", "name": "b"}],
    [{"type": "double", "name": "a"}, {"type": "string", "name": "b"}],
], ids=["matrix", "alone", "1-D", "wider", "fixed batch", "float16", "unnamed", "mixed with a column", "columns"])
def test_anything_else_is_left_as_it_is(inputs: list) -> None:
    assert as_columns({"inputs": inputs, "outputs": None}) is None


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.sampled_from(sorted(COLUMN_TYPES)), min_size=2,
                       max_size=6))
def test_the_tensors_a_pyfunc_is_fed_give_back_the_same_columns_and_layout(dtypes: dict) -> None:
    """The build writes `tensor_inputs` into a column-logged model's MLmodel: read back, those tensors are the same
    columns, fed alike (a "str" tensor is written as the unicode it is fed in)."""
    columns, layout = as_columns({"inputs": [_tensor(name, dtype) for name, dtype in dtypes.items()], "outputs": None})
    assert [column["name"] for column in columns["inputs"]] == list(dtypes)
    again = as_columns({"inputs": json.loads(tensor_inputs(layout)), "outputs": None})
    assert again == (columns, layout)
