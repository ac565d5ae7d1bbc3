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
from factory.compiled import COMPILED_FILE, Decision, decide
from factory.exactness import compare
from factory.onnx_graph import input_signature
from factory.registry import _flavor, _signature
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
    classifier = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame.values, minutes > 30)
    zipmap = "ZipMap" in kind
    graph = to_onnx(classifier, frame.values[:1].astype(np.float32), options={"zipmap": zipmap})
    return graph, frame.values.astype(np.float32), classifier.predict_proba(frame.values)


def _saved(tmp_path: Path, graph: Any, example: Any, outputs: Any, signed: bool = True) -> tuple[Path, dict, dict]:
    """The model saved by mlflow.onnx (`signed`: with a signature inferred from its example and outputs, as a user
    passes it; mlflow.onnx infers none): its folder, its signature and its flavor as `factory build` resolves them."""
    import mlflow.onnx
    from mlflow.models import Model, infer_signature

    folder = tmp_path / "model"
    mlflow.onnx.save_model(graph, str(folder), signature=infer_signature(example, outputs) if signed else None,
                           input_example=example[:3])
    info = Model.load(str(folder))
    signature = _signature(info.signature) if signed else input_signature(str(folder / "model.onnx"))
    return folder, signature, _flavor(info.flavors, signature)


def _decided(tmp_path: Path, kind: str) -> tuple[Decision, Path, dict]:
    folder, signature, flavor = _saved(tmp_path, *_onnx_model(kind), signed="no signature" not in kind)
    answer = golden.answerer(folder, signature["inputs"])
    native = {key: value for key, value in flavor.items() if key != "packages"}
    decision = decide(lambda: bento_module("mf_flavors").native_model(folder, native), native, signature,
                      golden_cases(answer, signature), Compile(), tmp_path / COMPILED_FILE, answer,
                      probes.example_rows(folder, signature))
    return decision, folder, signature


@pytest.mark.parametrize("kind, first", [
    ("Ridge, float64, columns", {"variable": float}),
    ("Ridge, float32, columns", {"variable": float}),
    ("LogisticRegression, tensor", {"label": int, "probabilities": list}),
    # its graph's input as the tensor signature (factory/registry.py): the pyfunc answers a dict of arrays
    ("LogisticRegression, no signature", {"label": int, "probabilities": list}),
])
def test_an_mlflow_onnx_models_own_graph_serves_compiled_and_answers_as_its_pyfunc(tmp_path: Path, kind: str,
                                                                                  first: dict) -> None:
    decision, folder, signature = _decided(tmp_path, kind)
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


@pytest.mark.parametrize("kind, reason", [
    ("LogisticRegression, ZipMap, tensor", "no exact compiled form: its own ONNX graph: output 'output_probability' is "
                                           "a sequence, not a tensor (convert classifiers with skl2onnx's "
                                           "zipmap=False)"),
])
def test_an_mlflow_onnx_graph_the_pyfunc_answers_otherwise_stays_on_the_pyfunc_saying_why(tmp_path: Path, kind: str,
                                                                                         reason: str) -> None:
    decision, _, _ = _decided(tmp_path, kind)
    assert (decision.path, decision.reason) == ("native", reason)


def test_an_mlflow_onnx_graph_of_several_inputs_stays_on_the_pyfunc_saying_why(tmp_path: Path) -> None:
    """skl2onnx's graph of a ColumnTransformer takes one input per column; the pyfunc feeds each a column's 1-D
    values."""
    import pandas as pd
    from onnx import TensorProto, helper

    graph = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["total"])], "sum",
        [helper.make_tensor_value_info(name, TensorProto.DOUBLE, [None]) for name in ("a", "b")],
        [helper.make_tensor_value_info("total", TensorProto.DOUBLE, [None])]),
        opset_imports=[helper.make_opsetid("", 17)])

    example = pd.DataFrame({"a": [1.0, 2.0, 3.5], "b": [0.5, 0.25, 4.0]})
    folder, signature, flavor = _saved(tmp_path, graph, example, example.a + example.b)
    native = {key: value for key, value in flavor.items() if key != "packages"}
    answer = golden.answerer(folder, signature["inputs"])
    decision = decide(lambda: bento_module("mf_flavors").native_model(folder, native), native, signature,
                      golden_cases(answer, signature), Compile(), tmp_path / COMPILED_FILE, answer)
    assert (decision.path, decision.reason) == (
        "native", "no exact compiled form: its own ONNX graph: the graph takes 2 inputs (a, b): MLflow's pyfunc feeds "
                  "each one column's values, so it serves them")


def test_a_graph_declaring_a_fixed_output_shape_builds_and_serves_without_a_warning_per_run(tmp_path: Path,
                                                                                            capfd) -> None:
    """onnxmltools' LightGBM classifier declares its label [1]: onnxruntime warned on every run at its default
    severity (a line per request in the pod's log), and MLflow's provider list (CUDA first) at every load."""
    import onnxruntime
    import pandas as pd
    from onnx import TensorProto, helper

    graph = helper.make_model(helper.make_graph(
        [helper.make_node("Mul", ["X", "X"], ["squared"])], "square",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, ["N", 2])],
        [helper.make_tensor_value_info("squared", TensorProto.DOUBLE, [1, 2])]),
        opset_imports=[helper.make_opsetid("", 17)])
    example = pd.DataFrame({"a": [1.0, 2.0, 3.5], "b": [0.5, 0.25, 4.0]}).to_numpy()
    folder, signature, flavor = _saved(tmp_path, graph, example, example ** 2, signed=False)
    native = {key: value for key, value in flavor.items() if key != "packages"}
    answer = golden.answerer(folder, signature["inputs"])
    decision = decide(lambda: bento_module("mf_flavors").native_model(folder, native), native, signature,
                      golden_cases(answer, signature), Compile(), tmp_path / COMPILED_FILE, answer,
                      probes.example_rows(folder, signature))
    assert decision.compiled, decision.reason
    built = capfd.readouterr()
    assert "VerifyOutputSizes" not in built.err + built.out and "CUDAExecutionProvider" not in built.err
    onnxruntime.set_default_logger_severity(2)  # the pod's: the build's answers set the process's to errors only
    rows = [[float(value), float(value) / 2] for value in range(16)]
    assert served_rows(decision.flavor, tmp_path / COMPILED_FILE, rows, signature)[3] == {"squared": [9.0, 2.25]}
    served = capfd.readouterr()
    assert "VerifyOutputSizes" not in served.err + served.out
