"""Compiled forms whose float32 arithmetic cannot hold the tolerance, however many sampled rows agree.

- SVM operators compute kernels in float32 in onnxruntime 1.32, also on double inputs: measured against
  scikit-learn on 2,000 ordinary rows, NuSVR differed by 1.4e-06 and SVC probabilities by 1.0e-06 relative at
  most (never 1e-05), and the golden rows agreed; an SVR answering near zero, by 1.6e-04 on a golden row. So the
  rtol advised is the candidate's own largest error on the rows checked, rounded up, at least 1e-05, and only where
  that rtol serves it (advised before the candidate ran, 1e-05 left that SVR native).
- A float32 tree ensemble sums float32 leaf values: its error is a fraction (2**-23) of the leaves summed, not of
  the answer. Where a regression's answers change sign, some answer lies near zero and is off by more than any
  relative tolerance: measured, an ExtraTreesRegressor answered -0.01137006 for -0.01137 (8e-06 relative) on 3 of
  2,000 ordinary rows, none of them among the rows checked. XGBoost itself sums in float32, so only models whose
  registry form sums in double (sklearn, LightGBM) are concerned.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from factory.catalog import Compile

FLOAT32_KERNELS = {"SVMClassifier", "SVMRegressor"}
KERNELS_RTOL = 1e-5
# The loosest rtol the build advises for float32 kernels. Near zero, kernel sums cancel and the float32 error is a
# large part of the answer (sweep A's StandardScaler + SVR: 1.6e-04 relative on a golden row, 5.2e-03 on 0.0098 near
# its example); an answer off by more than a tenth of a percent is reported as it is, with no tolerance advised.
KERNELS_RTOL_MAX = 1e-3
TREE_REGRESSOR = "TreeEnsembleRegressor"
DOUBLE_SUMS = {"skops", "pickle", "cloudpickle", "lightgbm"}  # loaders whose registry model sums leaves in double


def kernels(onnx_bytes: bytes, output: Any) -> list[str]:
    """The SVM operators of a candidate answering scores (not classes only), which onnxruntime computes in float32."""
    found = sorted(FLOAT32_KERNELS & {node.op_type for node in _graph(onnx_bytes).node})
    return found if _scores(output) else []


def _kernels_rtol(measured: float) -> float:
    """The rtol a candidate computing kernels in float32 needs: its largest relative error on the rows checked
    (`measured`), rounded up, and at least KERNELS_RTOL, which covers what other ordinary rows differ by."""
    return max(KERNELS_RTOL, _rounded_up(measured)) if measured > 0 else KERNELS_RTOL


def kernels_reason(found: list[str], measured: float, settings: Compile) -> Optional[str]:
    """Why a candidate computing `found` in float32, off by `measured` on the rows checked (each of which agreed
    within KERNELS_RTOL_MAX), cannot serve at this tolerance, and the rtol it serves at; or None."""
    needed = _kernels_rtol(measured)
    if not found or settings.rtol >= needed:
        return None
    return (f"onnxruntime computes {' and '.join(found)} in float32 whatever the input type: its answers differ from "
            f"the registry model's by up to {measured:.2g} relative on the rows checked, and such kernels' sums by up "
            f"to 1.4e-06 on other ordinary inputs (measured), beyond rtol {settings.rtol:g}; set compile.rtol to "
            f"{needed:g} in models.yaml to serve it compiled")


def leaves(onnx_bytes: bytes, precision: str, loader: str, answers: list, settings: Compile) -> Optional[str]:
    """Why a float32 tree regression whose answers change sign cannot serve at this tolerance, or None."""
    if precision != "float32" or loader not in DOUBLE_SUMS or not answers:
        return None
    if not all(isinstance(answer, float) for answer in answers) or not min(answers) < 0 < max(answers):
        return None
    error = leaf_error(onnx_bytes)
    if error == 0.0 or settings.atol >= error:
        return None
    return (f"its float32 trees sum leaf values with an error up to {error:.1g} (2**-23 of the largest leaves), and "
            f"the registry model's answers change sign, so the answers near zero differ beyond rtol "
            f"{settings.rtol:g}; set compile.atol to {_rounded_up(error):g} in models.yaml to serve it compiled")


def leaf_error(onnx_bytes: bytes) -> float:
    """2**-23 × the sum over trees of each tree's largest leaf magnitude (and the base value), over the graph's tree
    regressors; 0 for one tree alone, whose answer is one leaf, rounded to float32 relative to itself."""
    largest: list[float] = []
    for node in _graph(onnx_bytes).node:
        if node.op_type != TREE_REGRESSOR:
            continue
        attributes = {attribute.name: attribute for attribute in node.attribute}
        per_tree: dict[int, float] = {}
        weights = attributes["target_weights"].floats if "target_weights" in attributes else ()
        for tree, weight in zip(attributes["target_treeids"].ints, weights):
            per_tree[tree] = max(per_tree.get(tree, 0.0), abs(weight))
        bases = attributes["base_values"].floats if "base_values" in attributes else ()
        largest += [*per_tree.values(), *(abs(base) for base in bases if base)]
    return sum(largest) * 2.0**-23 if len(largest) > 1 else 0.0


def _rounded_up(value: float) -> float:
    """One significant digit, rounded up: a tolerance to write in models.yaml."""
    scale = 10 ** math.floor(math.log10(value))
    return math.ceil(value / scale) * scale


def _scores(output: Any) -> bool:
    """Whether an output holds scores (floats), not only classes."""
    if isinstance(output, (list, dict)):
        return any(_scores(item) for item in (output.values() if isinstance(output, dict) else output))
    return isinstance(output, float)


def _graph(onnx_bytes: bytes) -> Any:
    import onnx

    return onnx.load_from_string(onnx_bytes).graph
