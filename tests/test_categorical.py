"""Categorical string columns (factory/categorical.py): found where the model's encoders refuse other strings, and
then drawn from their categories by golden and fuzz requests. In-process sklearn models, fit in milliseconds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factory import categorical, fuzz
from factory.errors import ServeError
from factory.golden import sample_requests

SIGNATURE = {"inputs": [{"type": "double", "name": "distance km", "required": True},
                        {"type": "string", "name": "segment", "required": True},
                        {"type": "string", "name": "note", "required": True}]}
SEGMENTS = ["PHV", "TAXI", "XL"]
SKLEARN = {"loader": "cloudpickle", "predict_fn": "predict"}


def _pipeline(encoder: Any) -> Any:
    """A classifier encoding `segment` with `encoder`; `note` is dropped, as free text a model ignores."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    generator = np.random.default_rng(5)
    frame = pd.DataFrame({"distance km": generator.gamma(2.0, 3.0, 90), "segment": SEGMENTS * 30, "note": "x"})
    encode = ColumnTransformer([("numeric", StandardScaler(), ["distance km"]), ("segment", encoder, ["segment"])])
    return Pipeline([("encode", encode), ("classify", LogisticRegression())]).fit(frame, frame["distance km"] > 5)


def _answers(model: Any):
    """The registry model's answers as golden.answerer gives them: outputs, or the error it raised, per request."""
    import pandas as pd

    def answer(requests: list[dict]) -> list[dict]:
        replies = []
        for request in requests:
            try:
                replies.append({"outputs": model.predict(pd.DataFrame(request["inputs"])).tolist()})
            except ValueError as exc:
                replies.append({"error": str(exc)})
        return replies
    return answer


def _encoders() -> dict[str, Any]:
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    return {"one-hot, sklearn's default": OneHotEncoder(), "ordinal, sklearn's default": OrdinalEncoder(),
            "one-hot, ignore": OneHotEncoder(handle_unknown="ignore"),
            "ordinal, encoded value": OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)}


@pytest.mark.parametrize("encoder, flavor, found", [
    ("one-hot, sklearn's default", SKLEARN, {"segment": SEGMENTS}),
    ("ordinal, sklearn's default", SKLEARN, {"segment": SEGMENTS}),
    ("one-hot, ignore", SKLEARN, {}),  # answers any string: free-form
    ("ordinal, encoded value", SKLEARN, {}),
    ("one-hot, sklearn's default", {"loader": "pyfunc"}, {}),  # no ONNX form: its encoders are not read
])
def test_a_column_is_categorical_where_the_registry_model_refuses_other_strings(encoder: str, flavor: dict,
                                                                                 found: dict) -> None:
    model = _pipeline(_encoders()[encoder])
    assert categorical.find(lambda: model, flavor, SIGNATURE, _answers(model)) == found


@pytest.mark.parametrize("encoder, found", [
    ("ordinal, sklearn's default", {"segment": SEGMENTS}),
    ("ordinal, encoded value", {}),  # answers any string: free-form
])
def test_a_model_skl2onnx_does_not_convert_has_its_encoders_read_off_the_fitted_pipeline(encoder: str,
                                                                                        found: dict) -> None:
    """HistGradientBoosting splitting on the categories an OrdinalEncoder gave it has no ONNX form here."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    frame = pd.DataFrame({"distance km": np.arange(90.0), "segment": SEGMENTS * 30, "note": "x"})
    encode = ColumnTransformer([("segment", _encoders()[encoder], ["segment"])], remainder="passthrough")
    classify = HistGradientBoostingClassifier(max_iter=5, categorical_features=[0], min_samples_leaf=5)
    model = Pipeline([("encode", encode), ("classify", classify)]).fit(
        frame[["distance km", "segment"]], (frame["distance km"] > 40) ^ (frame["segment"] == "TAXI"))
    refused = [str(c) for c in categorical.candidates(model, SKLEARN, SIGNATURE)]
    assert refused == [f"ONNX {precision}: a HistGradientBoosting model splitting on categorical features (skl2onnx "
                       "converts numeric splits only)" for precision in ("float64", "float32")]
    assert categorical.find(lambda: model, SKLEARN, SIGNATURE, _answers(model)) == found


@pytest.mark.parametrize("columns", [["segment"], [1]])  # by name, and by position among the names fit on
def test_an_encoder_after_an_imputer_encodes_the_columns_its_column_transformer_gave(columns: list) -> None:
    """SimpleImputer hands the encoder a nameless array of the same columns: the names come from the selection."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    frame = pd.DataFrame({"distance km": np.arange(90.0), "segment": SEGMENTS * 30})
    fill = Pipeline([("fill", SimpleImputer(strategy="constant", fill_value="none")),
                     ("encode", _encoders()["ordinal, sklearn's default"])])
    encode = ColumnTransformer([("segment", fill, columns)], remainder="passthrough")
    model = Pipeline([("encode", encode), ("classify", HistGradientBoostingClassifier(max_iter=5))]).fit(
        frame, frame["distance km"] > 40)
    assert categorical.find(lambda: model, SKLEARN, SIGNATURE, _answers(model)) == {"segment": SEGMENTS}


def test_categories_the_registry_model_does_not_answer_are_not_categorical() -> None:
    """A model raising on every row (here: on any distance) confirms nothing: its columns stay free-form."""
    model = _pipeline(_encoders()["one-hot, sklearn's default"])
    assert categorical.find(lambda: model, SKLEARN, SIGNATURE, lambda requests: [{"error": "ValueError: no"}
                                                                               for _ in requests]) == {}


def test_a_model_that_does_not_load_has_no_categorical_columns() -> None:
    def broken() -> Any:
        raise OSError("model.pkl: no such file")

    assert categorical.find(broken, SKLEARN, SIGNATURE, _answers(None)) == {}


@pytest.mark.parametrize("values, made_up", [
    ([], "unknown category"), (["unknown category"], "unknown category!"),
    (["unknown category", "unknown category!"], "unknown category!!"),
])
def test_a_made_up_category_is_none_of_them(values: list[str], made_up: str) -> None:
    assert categorical.made_up(values) == made_up


def test_the_signature_carries_the_categories_and_the_build_says_so() -> None:
    annotated = categorical.annotated(SIGNATURE, {"segment": SEGMENTS})
    assert [spec.get("categories") for spec in annotated["inputs"]] == [None, SEGMENTS, None]
    assert categorical.annotated(SIGNATURE, {}) is SIGNATURE
    assert categorical.described({"segment": SEGMENTS, "a b": ["x"]}) == (
        'categorical columns (the registry model raises on any other value; requests outside them get a 400): '
        '"a b" (1 category), "segment" (3 categories)')


ANNOTATED = categorical.annotated(SIGNATURE, {"segment": SEGMENTS})


def test_golden_requests_draw_a_categorical_column_from_its_categories() -> None:
    requests = sample_requests(ANNOTATED, 12, 8)
    assert {row["segment"] for request in requests for row in request["inputs"]} == set(SEGMENTS)
    assert len({row["note"] for request in requests for row in request["inputs"]}) > 3  # free-form


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_valid_fuzz_requests_hold_categories_and_an_unknown_one_is_invalid_naming_the_field(data: Any) -> None:
    columns = fuzz.signature_columns(ANNOTATED)
    request = data.draw(fuzz.valid_request(columns, 4))
    assert all(row["segment"] in SEGMENTS for row in request["inputs"])
    kind, body, field = data.draw(fuzz.invalid_requests_by_kind(columns, 4)["unknown_category"])
    assert (kind, field) == ("unknown_category", "segment")
    assert any(row["segment"] not in SEGMENTS for row in json.loads(body)["inputs"])


@pytest.mark.parametrize("kind, categories", [("string", []), ("string", [1, 2]), ("string", "PHV"),
                                              ("double", ["1.5"])])
def test_categories_that_are_not_a_list_of_strings_are_refused(kind: str, categories: Any) -> None:
    signature = {"inputs": [{"type": kind, "name": "segment", "categories": categories}]}
    with pytest.raises(ServeError, match=r"^input column 'segment' has categories .*: only a string column has them, "
                                        r"a non-empty list of strings \(resolved.json is not what `factory build` "
                                        r"writes: build again\)$"):
        fuzz.signature_columns(signature)
