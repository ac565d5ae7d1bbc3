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
A graph of several one-column inputs (skl2onnx's form of a table of mixed types) is fed a [rows, 1] array per input
and answered as the pyfunc answers such a dict of arrays, every output as the graph gives it
(factory/tensor_columns.py). Models this module does not take stay on the pyfunc, saying why: other graphs of several
inputs, and outputs that are neither tensors nor a ZipMap's maps.

MLflow's pyfunc opens its session with onnxruntime's default of a thread per core, and a tree ensemble's sums then
depend on the batch a row comes in (of 2,000 rows a 20-tree forest answered alone, 1,124 were answered 1 ulp otherwise
in batches of 64 on 2 cores, none on one thread), so a tie of probabilities (0.5 against 0.5) came out a different
class in the pod than in golden.json, and on a node of 32 cores each pod would run 32 threads on its fraction of one.
`single_threaded` has the pyfunc open it on one thread (`onnx_session_options` in the model's MLmodel, unless the model
sets its own), as the compiled form runs: the golden answers, the pod and the compiled form then answer a row alike.

mlflow.onnx logs no signature unless given one (it infers none, even from an input example), and `mlflow models
serve` then feeds the graph whatever array a request holds. Such a model is served by its graph's one input, as the
tensor signature `input_signature` reads from it, or by its one-column inputs, as columns.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

from factory import atomic, onnx_locale, tensor_columns
from factory.guard import with_default_opset
from factory.model_env import read_mlmodel
from factory.onnx_convert import Candidate, NotConvertible
from factory.registry import ResolvedModel

# ONNX TensorProto element types the served feeds hold (mf_inputs.feeds: a numpy array of this dtype).
DTYPES = {1: "float32", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 8: "object"}
# Those a tensor signature takes (factory/fuzz_requests.py TENSOR_DTYPES): numbers and booleans.
TENSOR_DTYPES = {1: "float32", 11: "float64", 10: "float16", 7: "int64", 6: "int32", 5: "int16", 3: "int8",
                 13: "uint64", 12: "uint32", 4: "uint16", 2: "uint8", 9: "bool"}


def input_signature(path: str) -> dict:
    """The tensor signature of the graph at `path`: its one input's dtype and shape, -1 where a dimension is named
    or unknown, or its one-column inputs' (factory/tensor_columns.py serves those as columns). NotConvertible says
    why a graph has none (the model then needs a logged signature)."""
    import onnx

    model = onnx.load(path, load_external_data=False)  # the weights are not needed to read the inputs
    columns = _column_inputs(model, 1)
    if columns and (len(columns) > 1 or columns[0][1] == "object"):  # a string column; one number is a tensor
        return {"inputs": [{"type": "tensor", "name": name, "tensor-spec": {"dtype": dtype, "shape": [-1, 1]}}
                           for name, dtype in columns], "outputs": None}
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


def graph_inputs(signature: dict) -> str:
    """What an unsigned model is served by (`input_signature`), for the build's output."""
    specs = signature["inputs"]
    if specs[0].get("type") != "tensor":
        return (f"it takes its ONNX graph's {'inputs as columns' if len(specs) > 1 else 'input as a column'}: "
                + ", ".join(f"{spec['name']!r} ({spec['type']})" for spec in specs))
    tensor = specs[0]["tensor-spec"]
    return (f"it takes its ONNX graph's input {specs[0]['name']!r}, a {tensor['dtype']} tensor of shape "
            f"{tensor['shape']}")


def prepared(model_dir: Path, resolved: ResolvedModel, where: str, progress: Callable[[str], None]) -> ResolvedModel:
    """The imported mlflow.onnx model in `model_dir`, made ready before anything runs it: single-threaded, its text
    nodes opening without en_US.UTF-8 (factory/onnx_locale.py), and fed its one-column inputs as tensors where it was
    logged with columns (`fed_as_tensors`, said in `progress`)."""
    single_threaded(model_dir, where)
    onnx_locale.portable_file(model_dir / resolved.flavor["model_file"])
    feeds = fed_as_tensors(model_dir, resolved.flavor, resolved.signature, where)
    if not feeds:
        return resolved
    progress("its ONNX graph takes each column as a [rows, 1] tensor, which MLflow's pyfunc does not feed from a "
             "DataFrame: the imported model's signature names those tensors, and the served rows keep the columns")
    return dataclasses.replace(resolved, flavor={**resolved.flavor, "feeds": feeds})


def single_threaded(model_dir: Path, where: str) -> None:
    """Have MLflow's pyfunc run the mlflow.onnx model in `model_dir` on one intra-op thread, unless its MLmodel names
    a thread count of its own."""
    meta = read_mlmodel(model_dir, where)
    options = meta["flavors"]["onnx"].get("onnx_session_options") or {}
    if options.get("intra_op_num_threads"):
        return
    meta["flavors"]["onnx"]["onnx_session_options"] = {**options, "intra_op_num_threads": 1}
    _write_mlmodel(model_dir, meta)


def _write_mlmodel(model_dir: Path, meta: dict) -> None:
    """The imported copy's MLmodel, as `read_mlmodel` read it and this module changed it."""
    import yaml

    atomic.write_file(model_dir / "MLmodel", yaml.safe_dump(meta, sort_keys=False),
                      "point BENTOML_HOME at a writable disk")


def fed_as_tensors(model_dir: Path, flavor: dict, signature: dict, where: str) -> list | None:
    """For a graph of one-column inputs logged with a column signature (factory/tensor_columns.py, the first way):
    the feeds layout of those inputs, once the imported copy's MLmodel states them as its signature's inputs, so that
    MLflow's pyfunc takes them. None for any other model, left as it is."""
    import onnx

    if flavor.get("feeds") or (signature["inputs"] and signature["inputs"][0].get("type") == "tensor"):
        return None
    layout = _fed_columns(onnx.load(str(model_dir / flavor["model_file"]), load_external_data=False), signature)
    if layout is None or len(layout) < 2:  # one input takes the frame's matrix, as the pyfunc feeds it
        return None
    meta = read_mlmodel(model_dir, where)
    meta["signature"]["inputs"] = tensor_columns.tensor_inputs(layout)
    _write_mlmodel(model_dir, meta)
    return layout


def candidate(model: Any, signature: dict, fed: bool) -> Candidate:
    """The graph of `model` (an onnx.ModelProto) fed and answered as MLflow's pyfunc feeds and answers it: `fed`, a
    dict of one-column tensors (the flavor's `feeds`), which a graph of several one-column inputs is always fed."""
    if _column_inputs(model, 1 if fed else 2):
        return _columns_candidate(model, signature)
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


def _columns_candidate(model: Any, signature: dict) -> Candidate:
    """A graph of one-column inputs, each fed its signature column as [rows, 1], answered as the pyfunc answers a
    dict: every output as the graph answers it, not reshaped."""
    layout = _fed_columns(model, signature)
    if layout is None:
        columns = ", ".join(str(spec.get("name")) for spec in signature["inputs"])
        raise NotConvertible(f"its inputs ({', '.join(name for name, _ in _column_inputs(model, 1))}) are not the "
                             f"signature's columns ({columns})")
    served, maps = _without_zipmaps(model)
    precision = "float32" if any(dtype == "float32" for _, dtype, _ in layout) else "float64"
    return Candidate(precision, served.SerializeToString(), layout, "",
                     outputs=tuple(output.name for output in model.graph.output), flat=False, converted=False,
                     maps=maps)


def _fed_columns(model: Any, signature: dict) -> list | None:
    """The feeds layout (factory/tensor_columns.py) of a graph of one-column inputs: each input fed the signature
    column of its name, or the one skl2onnx named it after (`_converter_name`: column 'distance km' is input
    'distance_km'). None for any other graph, or when an input has no one column."""
    inputs = _column_inputs(model, 1)
    names = [spec["name"] for spec in signature["inputs"] if isinstance(spec.get("name"), str)]
    exact = {name for name, _ in inputs or ()} & set(names)
    layout = []
    for name, dtype in inputs or ():
        columns = [name] if name in exact else [column for column in names
                                                if column not in exact and _converter_name(column) == name]
        if len(columns) != 1:
            return None
        layout.append([name, dtype, columns])
    return layout if inputs and len({column for _, _, (column,) in layout}) == len(layout) else None


def _converter_name(column: str) -> str:
    """The input name skl2onnx makes of a column name (Topology._generate_unique_name, less the suffix it adds to a
    name already taken)."""
    name = re.sub(r"[^\w+]", "_", column)
    return "_" + name if re.match("[0-9]", name) else name


def _column_inputs(model: Any, least: int) -> list | None:
    """(name, numpy dtype) of each input of a graph whose `least` or more inputs each take one column of a fed dtype
    ([rows, 1]), else None."""
    found = []
    for graph_input in _fed_inputs(model):
        tensor = graph_input.type.tensor_type
        dims = list(tensor.shape.dim) if graph_input.type.HasField("tensor_type") else []
        dtype = DTYPES.get(tensor.elem_type)
        if (dtype is None or len(dims) != 2 or (dims[0].HasField("dim_value") and dims[0].dim_value > 0)
                or dims[1].dim_value != 1):
            return None
        found.append((graph_input.name, dtype))
    return found if len(found) >= least else None


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
    inputs = _fed_inputs(model)
    if len(inputs) != 1:
        raise NotConvertible(f"the graph takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}){otherwise}")
    return inputs[0]


def _fed_inputs(model: Any) -> list:
    """The graph's inputs a request feeds: its initializers (constants an old opset lists as inputs) aside."""
    constants = {tensor.name for tensor in model.graph.initializer}
    return [graph_input for graph_input in model.graph.input if graph_input.name not in constants]


def _described(value: Any) -> str:
    """What an input or output of the graph is: 'a sequence', 'a STRING tensor'."""
    from onnx import TensorProto

    kind = value.type.WhichOneof("value")
    if kind == "tensor_type":
        return f"a {TensorProto.DataType.Name(value.type.tensor_type.elem_type)} tensor"
    return {"sequence_type": "a sequence", "map_type": "a map", "optional_type": "an optional"}.get(kind, str(kind))
