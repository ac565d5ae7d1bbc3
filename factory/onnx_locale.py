"""Text graphs that open without the en_US locale.

onnxruntime's StringNormalizer constructs the C++ locale its node names as the session opens, en_US.UTF-8 when it
names none. skl2onnx converts every CountVectorizer and TfidfVectorizer with `lowercase=True` (their default) to such
a node, naming none. The factory's base image, Debian's python images (GitLab's `python:3.11-bookworm`) and this
machine have only C.UTF-8, so such a graph did not open anywhere the factory runs: a converted text pipeline stayed
native, and an mlflow.onnx text model was refused ("Failed to construct locale with name:en_US.UTF-8"), by MLflow's
pyfunc as by the compiled path.

A StringNormalizer naming no locale is given C.UTF-8, which glibc builds in since 2.35. onnxruntime 1.32 on glibc 2.36
lowers and uppers each of the 194,559 code points from U+0001 to U+2FFFF (surrogates aside) alike under both
(tests/test_onnx_locale.py), so the graph answers as its author's machine answered it. A node naming a locale keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from factory import atomic

PORTABLE = "C.UTF-8"


def portable(model: Any) -> bool:
    """Name C.UTF-8 in each StringNormalizer of `model` (an onnx.ModelProto, changed in place) that names no locale,
    in its graph, subgraphs and functions; whether any did."""
    from onnx import helper

    changed = False
    for node in _nodes(model):
        if node.op_type == "StringNormalizer" and node.domain in ("", "ai.onnx") and not any(
                attribute.name == "locale" for attribute in node.attribute):
            node.attribute.append(helper.make_attribute("locale", PORTABLE))
            changed = True
    return changed


def portable_file(path: Path) -> None:
    """`portable` for the graph saved at `path`, rewritten only when a node changed (its weights stay where they are:
    a graph of external data keeps its files)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if portable(model):
        atomic.write_file(path, model.SerializeToString(), "point BENTOML_HOME at a writable disk")


def _nodes(model: Any) -> Iterator[Any]:
    from onnx import AttributeProto

    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                if attribute.type == AttributeProto.GRAPH:
                    graphs.append(attribute.g)
                elif attribute.type == AttributeProto.GRAPHS:
                    graphs.extend(attribute.graphs)
    for function in model.functions:
        yield from function.node
