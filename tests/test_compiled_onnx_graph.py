"""mlflow.onnx models (factory/onnx_graph.py): their own graph serves on the compiled path, fed and answered as MLflow's
pyfunc feeds and answers it, or the model stays on the pyfunc saying why. Real models saved by mlflow.onnx, answered
by MLflow's pyfunc as golden.json records them, decided as `factory build` decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e_support.compiled_forms import golden_cases, served_rows

from factory import golden, probes
from factory.catalog import Compile
from factory.compiled import COMPILED_FILE, Decision, _runtime, decide
from factory.exactness import compare
from factory.onnx_graph import input_signature, prepared, single_threaded
from factory.registry import ResolvedModel, _signature, served
from factory.runtime import bento_module


def _onnx_model(kind: str) -> tuple[Any, Any, Any]:
    """(the ONNX graph, the input example, the outputs) for `kind`."""
    import pandas as pd
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"distance_km": rng.uniform(0.5, 30, 300), "hour": rng.integers(0, 24, 300).astype(float),
                          "traffic": rng.uniform(0, 1, 300)})
    minutes = 2.0 * frame.distance_km * (1 + frame.traffic) + rng.normal(0, 1, 300)
    if kind == "Ridge, float64, columns":
        model = make_pipeline(StandardScaler(), Ridge()).fit(frame, minutes)
        return to_onnx(model, frame.values[:1]), frame, model.predict(frame)
    if kind == "Ridge, float32, columns":  # the pyfunc casts the frame's float64 to the graph's float32
        model = make_pipeline(StandardScaler(), Ridge()).fit(frame, minutes)
        return to_onnx(model, frame.values[:1].astype(np.float32)), frame, model.predict(frame)
    classes = np.where(minutes > 30, "slow", "fast") if "string classes" in kind else minutes > 30
    classifier = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame.values, classes)
    zipmap = "ZipMap" in kind  # skl2onnx's default: a sequence of {class: probability} maps
    graph = to_onnx(classifier, frame.values[:1].astype(np.float32), options={"zipmap": zipmap})
    # a column signature's float64 columns are cast to the graph's float32 by the pyfunc
    example = frame if "columns" in kind else frame.values.astype(np.float32)
    return graph, example, classifier.predict_proba(frame.values)


def _saved(tmp_path: Path, graph: Any, example: Any, outputs: Any, signed: bool = True) -> tuple[Path, dict, dict]:
    """The model saved by mlflow.onnx (`signed`: with a signature inferred from its example and outputs, as a user
    passes it; mlflow.onnx infers none): its folder, its signature and its flavor as `factory build` resolves them."""
    import mlflow.onnx
    from mlflow.models import Model, infer_signature

    folder = tmp_path / "model"
    mlflow.onnx.save_model(graph, str(folder), signature=infer_signature(example, outputs) if signed else None,
                           input_example={name: column[:3] for name, column in example.items()}
                           if isinstance(example, dict) else example[:3])
    info = Model.load(str(folder))
    return (folder, *served(info.flavors, _signature(info.signature) if signed
                            else input_signature(str(folder / "model.onnx"))))


def _decided(tmp_path: Path, kind: str) -> tuple[Decision, Path, dict, dict]:
    return _graph_decided(tmp_path, *_onnx_model(kind), signed="no signature" not in kind)


def _graph_decided(tmp_path: Path, graph: Any, example: Any, outputs: Any,
                   signed: bool = True) -> tuple[Decision, Path, dict, dict]:
    """`graph` saved by mlflow.onnx and decided as `factory build` decides: the decision, the model's folder, its
    signature and the flavor its pyfunc is served by."""
    folder, signature, flavor = _saved(tmp_path, graph, example, outputs, signed)
    # as `factory build` makes the imported model ready
    flavor = prepared(folder, ResolvedModel("m", 1, "", "models:/m/1", signature, flavor), "models.yaml:1",
                      lambda line: None).flavor
    answer = golden.answerer(folder, signature["inputs"], flavor.get("feeds"))
    native = {key: value for key, value in flavor.items() if key != "packages"}
    decision = decide(lambda: bento_module("mf_flavors").native_model(folder, native), native, signature,
                      golden_cases(answer, signature), Compile(), tmp_path / COMPILED_FILE, answer,
                      probes.example_rows(folder, signature))
    return decision, folder, signature, flavor


@pytest.mark.parametrize("kind, first", [
    ("Ridge, float64, columns", {"variable": float}),
    ("Ridge, float32, columns", {"variable": float}),
    ("LogisticRegression, tensor", {"label": int, "probabilities": list}),
    # its graph's input as the tensor signature (factory/registry.py): the pyfunc answers a dict of arrays
    ("LogisticRegression, no signature", {"label": int, "probabilities": list}),
    # the probabilities it maps, mapped again in the pod as its ZipMap mapped them
    ("LogisticRegression, ZipMap, tensor", {"output_label": int, "output_probability": dict}),
    ("LogisticRegression, ZipMap, columns", {"output_label": int, "output_probability": dict}),
    ("LogisticRegression, ZipMap, string classes, no signature", {"output_label": str, "output_probability": dict}),
])
def test_an_mlflow_onnx_models_own_graph_serves_compiled_and_answers_as_its_pyfunc(tmp_path: Path, kind: str,
                                                                                  first: dict) -> None:
    decision, folder, signature, _ = _decided(tmp_path, kind)
    assert decision.compiled, decision.reason
    assert decision.reason.startswith("its own ONNX graph reproduces the registry model on ")
    assert decision.flavor["compiled_from"] == "pyfunc" and "output" not in decision.flavor
    # 500 rows as a client sends them, answered by the pyfunc and by the pod: the same to the last bit.
    requests = [{"inputs": case["inputs"]} for case in golden_cases(golden.answerer(folder, signature["inputs"]),
                                                                     signature)]
    rng = np.random.default_rng(11)
    rows = ([{"distance_km": float(d), "hour": float(h), "traffic": float(t)}
             for d, h, t in zip(rng.uniform(0, 40, 500), rng.integers(0, 24, 500), rng.uniform(0, 1, 500))]
            if signature["inputs"][0]["type"] != "tensor" else rng.uniform(0, 40, (500, 3)).astype(np.float32).tolist())
    expected = golden.answerer(folder, signature["inputs"])([{"inputs": rows}, *requests])[0]["outputs"]
    actual = bento_module("mf_inputs").nulled(served_rows(decision.flavor, tmp_path / COMPILED_FILE, rows, signature))
    assert compare(expected, actual, 0.0, 0.0).agrees
    assert {name: type(value) for name, value in actual[0].items()} == first


def _graph(nodes: list, inputs: list, outputs: list) -> Any:
    from onnx import helper

    return helper.make_model(helper.make_graph(nodes, "graph", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_an_mlflow_onnx_graph_of_several_inputs_stays_on_the_pyfunc_saying_why(tmp_path: Path) -> None:
    """skl2onnx's graph of a ColumnTransformer takes one input per column; the pyfunc feeds each a column's 1-D
    values."""
    import pandas as pd
    from onnx import TensorProto, helper

    graph = _graph([helper.make_node("Add", ["a", "b"], ["total"])],
                   [helper.make_tensor_value_info(name, TensorProto.DOUBLE, [None]) for name in ("a", "b")],
                   [helper.make_tensor_value_info("total", TensorProto.DOUBLE, [None])])
    example = pd.DataFrame({"a": [1.0, 2.0, 3.5], "b": [0.5, 0.25, 4.0]})
    decision, _, _, _ = _graph_decided(tmp_path, graph, example, example.a + example.b)
    assert (decision.path, decision.reason) == (
        "native", "no exact compiled form: its own ONNX graph: the graph takes 2 inputs (a, b): MLflow's pyfunc feeds "
                  "each one column's values, so it serves them")


def test_an_mlflow_onnx_graph_answering_a_sequence_no_zipmap_made_stays_on_the_pyfunc_saying_why(
        tmp_path: Path) -> None:
    """The pyfunc answers a sequence of one row each as it is; only a ZipMap's maps are rebuilt in the pod."""
    from onnx import TensorProto, helper

    graph = _graph([helper.make_node("SplitToSequence", ["X"], ["rows"], axis=0, keepdims=0)],
                   [helper.make_tensor_value_info("X", TensorProto.DOUBLE, ["N", 2])],
                   [helper.make_tensor_sequence_value_info("rows", TensorProto.DOUBLE, None)])
    example = np.array([[1.0, 2.0], [3.5, 0.5], [0.25, 4.0]])
    decision, _, _, _ = _graph_decided(tmp_path, graph, example, example, signed=False)
    assert (decision.path, decision.reason) == (
        "native", "no exact compiled form: its own ONNX graph: output 'rows' is a sequence, neither a tensor nor a "
                  "ZipMap's maps")


def test_a_graph_declaring_a_fixed_output_shape_builds_and_serves_without_a_warning_per_run(tmp_path: Path,
                                                                                            capfd) -> None:
    """onnxmltools' LightGBM classifier declares its label [1]: onnxruntime warned on every run at its default
    severity (a line per request in the pod's log), and MLflow's provider list (CUDA first) at every load."""
    import onnxruntime
    import pandas as pd
    from onnx import TensorProto, helper

    graph = _graph([helper.make_node("Mul", ["X", "X"], ["squared"])],
                   [helper.make_tensor_value_info("X", TensorProto.DOUBLE, ["N", 2])],
                   [helper.make_tensor_value_info("squared", TensorProto.DOUBLE, [1, 2])])
    example = pd.DataFrame({"a": [1.0, 2.0, 3.5], "b": [0.5, 0.25, 4.0]}).to_numpy()
    decision, _, signature, _ = _graph_decided(tmp_path, graph, example, example ** 2, signed=False)
    assert decision.compiled, decision.reason
    built = capfd.readouterr()
    assert "VerifyOutputSizes" not in built.err + built.out and "CUDAExecutionProvider" not in built.err
    onnxruntime.set_default_logger_severity(2)  # the pod's: the build's answers set the process's to errors only
    rows = [[float(value), float(value) / 2] for value in range(16)]
    assert served_rows(decision.flavor, tmp_path / COMPILED_FILE, rows, signature)[3] == {"squared": [9.0, 2.25]}
    served = capfd.readouterr()
    assert "VerifyOutputSizes" not in served.err + served.out


def test_the_pyfunc_answers_a_forest_graphs_row_alike_alone_and_in_a_batch_once_single_threaded(tmp_path: Path) -> None:
    """onnxruntime's thread per core summed a forest's trees in an order that depends on the batch: golden.json's 0.5
    against 0.5 came out class 0 at build time and class 1 in the pod. On one thread, a row answers alike in any batch
    (on two cores, 56 % of rows in batches of 64 had differed from their answer alone)."""
    import mlflow.pyfunc
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    rows = np.random.default_rng(5).uniform([18, 5000, -3], [90, 200000, 3], (320, 3)).astype(np.float32)
    forest = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(rows, rows[:, 1] > 100000)
    folder, _, _ = _saved(tmp_path, to_onnx(forest, rows[:1]), rows, None, signed=False)
    single_threaded(folder, "models.yaml:1")
    model = mlflow.pyfunc.load_model(str(folder))
    alone = [model.predict(rows[index:index + 1])["output_probability"][0] for index in range(len(rows))]
    batched = [answer for start in range(0, len(rows), 64)
               for answer in model.predict(rows[start:start + 64])["output_probability"]]
    assert batched == alone


@pytest.mark.parametrize("logged, pinned", [
    (None, {"intra_op_num_threads": 1}),
    ({"execution_mode": "sequential"}, {"execution_mode": "sequential", "intra_op_num_threads": 1}),
    ({"intra_op_num_threads": 4}, {"intra_op_num_threads": 4}),  # the model's own choice stands
])
def test_single_threaded_pins_one_thread_unless_the_model_names_its_own(tmp_path: Path, logged: Any,
                                                                       pinned: dict) -> None:
    import mlflow.onnx
    from mlflow.models import Model

    graph, example, _ = _onnx_model("Ridge, float64, columns")
    mlflow.onnx.save_model(graph, str(tmp_path / "model"), onnx_session_options=logged)
    single_threaded(tmp_path / "model", "models.yaml:1")
    assert Model.load(str(tmp_path / "model")).flavors["onnx"]["onnx_session_options"] == pinned


def _mixed_graph(zipmap: bool) -> tuple[Any, Any]:
    """skl2onnx's form of a table of mixed types: one [None, 1] input per column, a string beside numbers. (The graph,
    the frame it was fit on.)"""
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"city": rng.choice(["paris", "lyon", "nice"], 300).astype(object),
                          "distance": rng.gamma(2, 3, 300).astype(np.float32),
                          "hour": rng.integers(0, 24, 300).astype(np.int64)})
    late = np.where(frame.distance * (1 + (frame.city == "paris")) > 8, "late", "on time")
    encode = ColumnTransformer([("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                                ("numbers", StandardScaler(), ["distance", "hour"])])
    model = make_pipeline(encode, LogisticRegression()).fit(frame, late)
    types = [("city", StringTensorType([None, 1])), ("distance", FloatTensorType([None, 1])),
             ("hour", Int64TensorType([None, 1]))]
    return convert_sklearn(model, initial_types=types, options={id(model): {"zipmap": zipmap}}), frame


def _logged(frame: Any, how: str) -> Any:
    """The input example a user logs the mixed graph with: its frame (a column signature), or a dict of its columns
    as [rows, 1] arrays (a signature of one-column tensors; "unicode": numpy strings, whose TensorSpec is 'str')."""
    if how == "columns":
        return frame
    columns = {name: np.asarray(frame[name].to_numpy()).reshape(-1, 1) for name in frame.columns}
    return {**columns, "city": columns["city"].astype(str if how == "unicode tensors" else object)}


MIXED_ROWS = [{"city": city, "distance": distance, "hour": hour}
              for city in ("paris", "lyon", "", "Paris ", "nice") for distance in (0.0, 2.5, 7.75, 30.0, 1e6)
              for hour in (0, 8, 23, -1)]


@pytest.mark.parametrize("how, zipmap", [("columns", False), ("columns", True), ("tensors", False),
                                         ("unicode tensors", True), ("no signature", False)])
def test_a_graph_of_one_column_inputs_serves_as_columns_however_it_was_logged(tmp_path: Path, how: str,
                                                                             zipmap: bool) -> None:
    """MLflow's pyfunc raised on every request of a frame logged so ("Input must be a list of dictionaries or a single
    numpy array for input 'city'"), and the factory refused the other two ways. Each is served as rows of columns now,
    compiled and through the pyfunc, answering alike to the last bit."""
    import mlflow.pyfunc

    graph, frame = _mixed_graph(zipmap)
    example = _logged(frame, how)
    if how == "columns":
        with pytest.raises(RuntimeError, match="Input must be a list of dictionaries or a single numpy array"):
            mlflow.pyfunc.load_model(str(_saved(tmp_path / "as logged", graph, example, None)[0])).predict(frame[:3])
    decision, folder, signature, flavor = _graph_decided(tmp_path, graph, example, None,
                                                         signed=how != "no signature")
    assert decision.compiled, decision.reason
    assert [(spec["name"], spec["type"]) for spec in signature["inputs"]] == [
        ("city", "string"), ("distance", "float"), ("hour", "long")]
    assert decision.flavor["feeds"] == [["city", "object", ["city"]], ["distance", "float32", ["distance"]],
                                        ["hour", "int64", ["hour"]]]
    assert flavor["feeds"][0] == ["city", "str" if how == "unicode tensors" else "object", ["city"]]
    expected = golden.answerer(folder, signature["inputs"], flavor["feeds"])([{"inputs": MIXED_ROWS}])[0]["outputs"]
    compiled = served_rows(decision.flavor, tmp_path / COMPILED_FILE, MIXED_ROWS, signature)
    through_pyfunc = _runtime().Predictor(str(folder), {"signature": signature, "flavor": flavor}).run(MIXED_ROWS)
    assert compare(expected, compiled, 0.0, 0.0).agrees
    assert compare(expected, through_pyfunc, 0.0, 0.0).agrees
    assert {type(value) for value in compiled[0].values()} == ({str, dict} if zipmap else {str, list})


def _columns(*names: str) -> dict:
    return {"inputs": [{"type": "double", "name": name, "required": True} for name in names], "outputs": None}


@pytest.mark.parametrize("inputs, signature, fed", [
    (["a", "b"], _columns("b", "a"), [["a", "float64", ["a"]], ["b", "float64", ["b"]]]),
    # skl2onnx names an input after its column, C-style (its Topology._generate_unique_name)
    (["distance_km", "_1st_hour"], _columns("distance km", "1st hour"),
     [["distance_km", "float64", ["distance km"]], ["_1st_hour", "float64", ["1st hour"]]]),
    (["a_b", "c"], _columns("a_b", "a b", "c"), [["a_b", "float64", ["a_b"]], ["c", "float64", ["c"]]]),
    (["a_b", "c"], _columns("a b", "a-b", "c"), "its inputs (a_b, c) are not the signature's columns (a b, a-b, c)"),
    (["a", "b"], _columns("a"), "its inputs (a, b) are not the signature's columns (a)"),
], ids=["by name", "as skl2onnx names them", "a name before a likeness", "two alike", "a column missing"])
def test_a_graph_of_one_column_inputs_is_fed_each_its_column(inputs: list, signature: dict, fed: Any) -> None:
    from onnx import TensorProto, helper

    from factory.onnx_convert import NotConvertible
    from factory.onnx_graph import candidate

    graph = _graph([helper.make_node("Concat", inputs, ["both"], axis=1)],
                   [helper.make_tensor_value_info(name, TensorProto.DOUBLE, ["N", 1]) for name in inputs],
                   [helper.make_tensor_value_info("both", TensorProto.DOUBLE, ["N", 2])])
    if isinstance(fed, str):
        with pytest.raises(NotConvertible) as caught:
            candidate(graph, signature, False)
        assert str(caught.value) == fed
    else:
        assert candidate(graph, signature, False).feeds == fed


@pytest.mark.parametrize("how", ["columns", "no signature"])
def test_a_text_models_graph_opens_without_en_us_and_serves_compiled(tmp_path: Path, how: str) -> None:
    """skl2onnx lowers a vectorizer's text with a StringNormalizer naming no locale, which onnxruntime takes for
    en_US.UTF-8: on a machine without it (this one, the base image), MLflow's pyfunc could not open the graph at all.
    The build names C.UTF-8 in the imported model (factory/onnx_locale.py)."""
    import pandas as pd
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    words = np.array(["Good", "bad", "GREAT", "awful", "Café", "ÉTÉ", "service", "day"])
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(200)]
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [("good" in t.lower()) for t in texts])
    graph = to_onnx(pipeline, initial_types=[("review", StringTensorType([None, 1]))])
    decision, folder, signature, flavor = _graph_decided(tmp_path, graph, pd.DataFrame({"review": texts}), None,
                                                         signed=how == "columns")
    assert decision.compiled, decision.reason
    rows = [{"review": text} for text in ["café GOOD", "Été", "", "unknown words", "BAD bad"]]
    expected = golden.answerer(folder, signature["inputs"], flavor.get("feeds"))([{"inputs": rows}])[0]["outputs"]
    assert compare(expected, served_rows(decision.flavor, tmp_path / COMPILED_FILE, rows, signature), 0.0, 0.0).agrees
