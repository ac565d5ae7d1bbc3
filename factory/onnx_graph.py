"""An mlflow.onnx model's own graph as the compiled candidate: no conversion, only the feeding and answering.

MLflow's pyfunc runs such a model on onnxruntime behind pandas and MLflow (~200 MiB a process, and a DataFrame per
call). The graph already is what `factory build` converts other flavors to, so it is served on the compiled path
when it answers as that pyfunc answers (factory/compiled.py checks it so, like any candidate). The pyfunc, in
mlflow/onnx/__init__.py (`_OnnxModelWrapper.predict`), for a graph of one input:
- feeds a column signature's frame as one matrix of every column in signature order (`DataFrame.values`), a tensor
  signature's array as it is, cast from float64 to float32 where the input is a float tensor;
- runs every output, and answers a frame of them for a column signature, each output reshaped to one value per row
  (a frame cannot hold outputs of other lengths: it raises), or a dict of the arrays for a tensor signature.
A classifier's ZipMap output (skl2onnx's default: a sequence of one {class: probability} map per row, which the pyfunc
answers as it is) is served from the probabilities it maps: the ZipMap becomes an Identity, and the pod builds the
same maps from the rows of that tensor and the class labels kept in the flavor (`maps`), Python ints or strings
mapped to Python floats, as onnxruntime builds them.
Models this module does not take stay on the pyfunc, saying why: a graph of several inputs (the pyfunc feeds each a
column's 1-D values, which a converter's [rows, 1] inputs refuse), and other outputs that are not tensors.

MLflow's pyfunc opens its session with onnxruntime's default of a thread per core, and a tree ensemble's sums then
depend on the batch a row comes in (of 2,000 rows a 20-tree forest answered alone, 1,124 were answered 1 ulp otherwise
in batches of 64 on 2 cores, none on one thread), so a tie of probabilities (0.5 against 0.5) came out a different
class in the pod than in golden.json, and on a node of 32 cores each pod would run 32 threads on its fraction of one.
`single_threaded` has the pyfunc open it on one thread (`onnx_session_options` in the model's MLmodel, unless the model
sets its own), as the compiled form runs: the golden answers, the pod and the compiled form then answer a row alike.

mlflow.onnx logs no signature unless given one (it infers none, even from an input example), and `mlflow models
serve` then feeds the graph whatever array a request holds. Such a model is served by its graph's one input, as the
tensor signature `input_signature` reads from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factory import atomic
from factory.guard import with_default_opset
from factory.model_env import read_mlmodel
from factory.onnx_convert import Candidate, NotConvertible

# ONNX TensorProto element types the served feeds hold (mf_inputs.feeds: a numpy array of this dtype).
DTYPES = {1: "float32", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 8: "object"}
# Those a tensor signature takes (factory/fuzz_requests.py TENSOR_DTYPES): numbers and booleans.
TENSOR_DTYPES = {1: "float32", 11: "float64", 10: "float16", 7: "int64", 6: "int32", 5: "int16", 3: "int8",
                 13: "uint64", 12: "uint32", 4: "uint16", 2: "uint8", 9: "bool"}


def input_signature(path: str) -> dict:
    """The tensor signature of the graph at `path`: its one input's dtype and shape, -1 where a dimension is named
    or unknown. NotConvertible says why a graph has none (the model then needs a logged signature)."""
    import onnx

    model = onnx.load(path, load_external_data=False)  # the weights are not needed to read the inputs
    graph_input = _only_input(model, "")
    tensor = graph_input.type.tensor_type
    dtype = TENSOR_DTYPES.get(tensor.elem_type) if graph_input.type.HasField("tensor_type") else None
    if dtype is None:
        raise NotConvertible(f"its input {graph_input.name!r} is {_described(graph_input)}, not a numeric one")
    if not tensor.HasField("shape") or not tensor.shape.dim:
        raise NotConvertible(f"its input {graph_input.name!r} declares no shape")
    shape = [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1 for dim in tensor.shape.dim]
    if shape[0] != -1:
        raise NotConvertible(f"its input {graph_input.name!r} takes a fixed batch of {shape[0]} row"
                             f"{'' if shape[0] == 1 else 's'} (shape {shape}) where a served batch holds any number "
                             "(or export the graph with a dynamic first dimension)")
    return {"inputs": [{"type": "tensor", "name": graph_input.name, "tensor-spec": {"dtype": dtype, "shape": shape}}],
            "outputs": None}


def single_threaded(model_dir: Path, where: str) -> None:
    """Have MLflow's pyfunc run the mlflow.onnx model in `model_dir` on one intra-op thread, unless its MLmodel names
    a thread count of its own."""
    import yaml

    path = model_dir / "MLmodel"
    meta = read_mlmodel(model_dir, where)
    options = meta["flavors"]["onnx"].get("onnx_session_options") or {}
    if options.get("intra_op_num_threads"):
        return
    meta["flavors"]["onnx"]["onnx_session_options"] = {**options, "intra_op_num_threads": 1}
    atomic.write_file(path, yaml.safe_dump(meta, sort_keys=False), "point BENTOML_HOME at a writable disk")


def candidate(model: Any, signature: dict) -> Candidate:
    """The graph of `model` (an onnx.ModelProto) fed and answered as MLflow's pyfunc feeds and answers it."""
    graph_input = _only_input(model, ": MLflow's pyfunc feeds each one column's values, so it serves them")
    dtype = DTYPES.get(graph_input.type.tensor_type.elem_type) if graph_input.type.HasField("tensor_type") else None
    if dtype is None:
        raise NotConvertible(f"input {graph_input.name!r} is {_described(graph_input)}, which no request feeds "
                             "here")
    served, maps = _without_zipmaps(model)
    tensor = bool(signature["inputs"]) and signature["inputs"][0].get("type") == "tensor"
    columns = None if tensor else [spec.get("name", f"c{index}") for index, spec in enumerate(signature["inputs"])]
    precision = "float32" if dtype == "float32" else "float64"
    return Candidate(precision, served.SerializeToString(), [[graph_input.name, dtype, columns]], "",
                     outputs=tuple(output.name for output in model.graph.output), flat=not tensor, converted=False,
                     maps=maps)


def _without_zipmaps(model: Any) -> tuple[Any, tuple]:
    """A copy of the graph answering each ZipMap output as the probabilities it maps, and (output, class labels) per
    such output. NotConvertible names an output that is neither a tensor nor a ZipMap's."""
    import onnx
    from onnx import TensorProto, helper

    served = onnx.ModelProto()
    served.CopyFrom(model)
    producers = {name: node for node in served.graph.node for name in node.output}
    maps = []
    for graph_output in served.graph.output:
        if graph_output.type.HasField("tensor_type"):
            continue
        node = producers.get(graph_output.name)
        if node is None or (node.op_type, node.domain) != ("ZipMap", "ai.onnx.ml"):
            raise NotConvertible(f"output {graph_output.name!r} is {_described(graph_output)}, neither a tensor nor "
                                 "a ZipMap's maps")
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        labels = (list(attributes["classlabels_int64s"]) if "classlabels_int64s" in attributes
                  else [label.decode() for label in attributes.get("classlabels_strings", [])])
        maps.append((graph_output.name, labels))
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
        # ZipMap takes float probabilities only; the rank is left unstated, as ZipMap's [rows, classes] or [classes]
        graph_output.CopyFrom(helper.make_tensor_value_info(graph_output.name, TensorProto.FLOAT, None))
    if maps:
        with_default_opset(served)  # the Identity's
    return served, tuple(maps)


def _only_input(model: Any, otherwise: str) -> Any:
    """The graph's one input (its initializers aside), or NotConvertible naming them all, then `otherwise`."""
    constants = {tensor.name for tensor in model.graph.initializer}
    inputs = [graph_input for graph_input in model.graph.input if graph_input.name not in constants]
    if len(inputs) != 1:
        raise NotConvertible(f"the graph takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}){otherwise}")
    return inputs[0]


def _described(value: Any) -> str:
    """What an input or output of the graph is: 'a sequence', 'a STRING tensor'."""
    from onnx import TensorProto

    kind = value.type.WhichOneof("value")
    if kind == "tensor_type":
        return f"a {TensorProto.DataType.Name(value.type.tensor_type.elem_type)} tensor"
    return {"sequence_type": "a sequence", "map_type": "a map", "optional_type": "an optional"}.get(kind, str(kind))
