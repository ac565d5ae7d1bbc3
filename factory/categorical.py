"""String columns the registry model takes only a fixed set of values in: its categorical columns.

An encoder fit with handle_unknown="error" (scikit-learn's default for OneHotEncoder and OrdinalEncoder) raises
"Found unknown categories" on any string it was not fit on. Requests sampled from the signature hold made-up
strings, so such a model answered none of them: no golden predictions, a 500 for every valid fuzz request, a
capacity of 0. So `factory build` reads each string column's categories where the model's ONNX form holds them
(the categories its encoders were fit on, traced to request columns by factory/onnx_columns.py), or, for a
scikit-learn model skl2onnx does not convert (a HistGradientBoosting model after an OrdinalEncoder, the usual
way to feed it categories), off its fitted encoders by the column names they were fit on; and asks the
registry model itself: a column is categorical only where it answers every one of them and raises on a made-up
string. An encoder with handle_unknown="ignore" (or "use_encoded_value") answers any string: that column stays
free-form. The column's spec in resolved.json's signature then carries them (`"categories": [...]`): golden and
fuzz requests draw its values from them, and the served row model refuses any other string with a 400 naming the
field and the values it takes (templates/bento/mf_schema.py).

A model with neither (a custom PythonModel, a converter failing on some step of another library) keeps its string
columns free-form: the values of its logged input example would be a guess at the categories, and a served model refusing
a category its encoders know, because the example lacked it, is worse than the 500 an unknown one gets.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Sequence

from factory import onnx_columns, probes
from factory.golden import Answer
from factory.onnx_convert import Candidate, candidates

KEY = "categories"  # the key of a categorical column's spec in resolved.json's signature
ROWS_PER_REQUEST = 64
MADE_UP = "unknown category"  # a string no encoder was fit on (made longer, should one have been)


def find(load_native: Callable[[], Any], flavor: dict, signature: dict, answer: Answer,
         examples: Sequence[dict] = ()) -> dict[str, list[str]]:
    """Per categorical column (by name; c0, c1, … where unnamed), its categories, sorted: read from the model's
    ONNX form, confirmed by the registry model (`answer`) on rows holding them, one column at a time, the others from
    `examples` (its logged input example) or plain values. {} where no string column is categorical, or the model
    has no ONNX form."""
    columns = onnx_columns.request_columns(signature)
    tensor = signature["inputs"][0].get("type") == "tensor"
    if tensor or flavor["loader"] == "pyfunc" or not any(kind == "string" for _, kind in columns):
        return {}
    read = _encoded(load_native, flavor, signature)
    known = {columns[index][0]: values for index, values in read.items() if values}
    if not known:
        return {}
    complete = probes.complete_rows(list(examples) or [{}], columns)  # plain values where there is no example
    if not complete:
        return {}
    base = dict(zip((name for name, _ in columns), complete[0]))
    base.update((name, values[0]) for name, values in known.items())
    return {name: values for name, values in known.items() if _confirmed(answer, base, name, values)}


def _encoded(load_native: Callable[[], Any], flavor: dict, signature: dict) -> dict[int, list[str]]:
    """The categories the first ONNX form of the model holds per string column, else its fitted scikit-learn
    encoders'; {} without either."""
    try:
        model = load_native()
    except Exception:  # whatever the flavor's library raises: the build's compile step reports it on its own
        return {}
    for candidate in candidates(model, flavor, signature):
        if isinstance(candidate, Candidate):
            return onnx_columns.categories(candidate.onnx, candidate.feeds, signature)
    return _fitted(model, signature)


def _fitted(model: Any, signature: dict) -> dict[int, list[str]]:
    """Per string column, the string categories of the scikit-learn encoders fit on a column of its name."""
    index = {name: i for i, (name, kind) in enumerate(onnx_columns.request_columns(signature)) if kind == "string"}
    found: dict[int, set[str]] = {}
    for encoder, names in _encoders(model, ()):
        for name, values in zip(names, encoder.categories_):
            strings = {value for value in values.tolist() if isinstance(value, str)}  # not NaN, fit on missing
            if name in index and strings:
                found.setdefault(index[name], set()).update(strings)
    return {column: sorted(values) for column, values in sorted(found.items())}


def _encoders(estimator: Any, names: Sequence[str]) -> Iterator[tuple[Any, Sequence[str]]]:
    """The fitted one-hot and ordinal encoders in `estimator`, through pipelines, column transformers and unions,
    each with the request columns it encodes: the names it was fit on (`feature_names_in_`: fit on a DataFrame), else
    the columns a ColumnTransformer gave the pipeline it ends, where only imputers come before it (an imputer
    hands on an array, nameless, of the same columns: SimpleImputer(strategy="constant") then OneHotEncoder)."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if isinstance(estimator, (OneHotEncoder, OrdinalEncoder)) and hasattr(estimator, "categories_"):
        yield estimator, list(getattr(estimator, "feature_names_in_", names))
    for _, step in getattr(estimator, "steps", ()):
        yield from _encoders(step, names)
        names = names if isinstance(step, SimpleImputer) else ()
    known = list(getattr(estimator, "feature_names_in_", ()))
    for _, part, columns in getattr(estimator, "transformers_", ()):
        yield from _encoders(part, _column_names(columns, known))
    for _, part in getattr(estimator, "transformer_list", ()):
        yield from _encoders(part, names)


def _column_names(columns: Any, known: list[str]) -> list[str]:
    """A ColumnTransformer's column selection as names: names as given, positions among the names it was fit on."""
    picked = list(columns) if isinstance(columns, (list, tuple)) else []
    if all(isinstance(column, str) for column in picked):
        return picked
    if known and all(isinstance(column, int) and 0 <= column < len(known) for column in picked):
        return [known[column] for column in picked]
    return []


def _confirmed(answer: Answer, base: dict, name: str, values: list[str]) -> bool:
    """Whether the registry model answers `base` with `name` at each of `values`, and raises on a made-up one."""
    rows = [{**base, name: value} for value in values]
    requests = [{"inputs": rows[start:start + ROWS_PER_REQUEST]} for start in range(0, len(rows), ROWS_PER_REQUEST)]
    answered = answer(requests + [{"inputs": [{**base, name: made_up(values)}]}])
    return all("outputs" in reply for reply in answered[:-1]) and "outputs" not in answered[-1]


def made_up(values: Sequence[str]) -> str:
    """A string not among `values`."""
    text = MADE_UP
    while text in values:
        text += "!"
    return text


def annotated(signature: dict, found: dict[str, list[str]]) -> dict:
    """`signature` with each categorical column's spec carrying its categories."""
    if not found:
        return signature
    names = [name for name, _ in onnx_columns.request_columns(signature)]
    inputs = [{**spec, KEY: found[name]} if name in found else spec for name, spec in zip(names, signature["inputs"])]
    return {**signature, "inputs": inputs}


def described(found: dict[str, list[str]]) -> str:
    """One line for the build output: which columns are categorical, with how many categories."""
    return "categorical columns (the registry model raises on any other value; requests outside them get a 400): " \
        + ", ".join(f"{json.dumps(name)} ({len(values)} categor{'y' if len(values) == 1 else 'ies'})"
                    for name, values in sorted(found.items()))
