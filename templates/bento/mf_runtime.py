"""Runtime shared by every generated Bento: request rows from the MLflow signature, and the predictor.

Copied verbatim into each model's folder by `factory render`. It must import nothing heavy at module
level: BentoML's arbiter process imports the service file too, and every MiB there is paid per model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import mf_inputs
from mf_http import FAILURE_MARK

LOG = logging.getLogger("mf_runtime")
RESOLVED_FILE = "resolved.json"


def load_resolved(service_file: str) -> dict:
    """What `factory build` resolved for this model: tags, signature, flavor, registry version."""
    return json.loads((Path(service_file).parent / RESOLVED_FILE).read_text(encoding="utf-8"))


class Predictor:
    """Runs the model on a merged adaptive batch; a row the model fails on fails alone.

    BentoML hands one exception to every request of a batch (FIELD_NOTES). Here a batch that raises
    is bisected until the rows that raise are alone: they get a failure marker, every other row its
    prediction, and the server (mf_fast; mf_http.ErrorShape under `bentoml serve`) turns a request
    holding a marker into its own 500. When nothing raises, the batch runs once, as before.
    """

    def __init__(self, mlflow_model_dir: str, resolved: dict, allow_non_finite: bool = False):
        import mf_flavors

        self.inputs = resolved["signature"]["inputs"]
        self.tensor = mf_inputs.is_tensor(self.inputs)
        self.allow_non_finite = allow_non_finite
        self.model = mf_flavors.load(Path(mlflow_model_dir), resolved["flavor"])

    def predict(self, rows: list[Any], params: Optional[Any] = None) -> list[Any]:
        """`rows` as validated (mf_schema.row_model: dicts keyed by column, a tensor's lists); `params`: the
        request's validated params model (mf_schema.params_model), None for the signature's defaults."""
        given = None if params is None or not type(params).model_fields else params.model_dump(by_alias=True)
        return self._isolated(rows, given)

    def _isolated(self, records: list[Any], params: Optional[dict]) -> list[Any]:
        try:
            outputs, finite = self._outputs(records, params)
        except Exception as exc:  # the model's own failure, whatever its type
            if len(records) == 1:
                LOG.warning("the model raised on one row", exc_info=True)
                return [failure("model_error", f"the model raised {type(exc).__name__}: {str(exc)[:300]}")]
            middle = len(records) // 2
            return self._isolated(records[:middle], params) + self._isolated(records[middle:], params)
        return outputs if finite else [self._finite(output) for output in outputs]

    def run(self, records: list[Any], params: Optional[dict] = None) -> list[Any]:
        """The model on the whole batch, raising what it raises. Records are dicts keyed by signature
        column (tensor rows are lists); `factory build` checks a compiled form through this too. `params`
        reach only a pyfunc model (the only loader for a signature with params, factory/registry.py)."""
        return self._outputs(records, params)[0]

    def _outputs(self, records: list[Any], params: Optional[dict]) -> tuple[list[Any], bool]:
        """`run`'s outputs, and whether all of them are known finite (mf_inputs.known_finite)."""
        import numpy as np

        if self.model.wants == "feeds":
            batch = mf_inputs.feeds(records, self.inputs, self.model.feeds)
        elif self.tensor:
            batch = mf_inputs.tensor(records, self.inputs)
        elif self.model.wants == "frame":
            batch = mf_inputs.frame(records, self.inputs)
        else:
            batch = mf_inputs.array(records, self.inputs)
        predictions = self.model.predict(batch) if params is None else self.model.predict(batch, params=params)
        outputs = mf_inputs.as_outputs(predictions)
        if not isinstance(outputs, list) or len(outputs) != len(records):
            raise ValueError(f"the model returned {np.shape(outputs)} outputs for {len(records)} rows")
        return outputs, mf_inputs.known_finite(predictions)

    def _finite(self, output: Any) -> Any:
        if mf_inputs.all_finite(output):
            return output
        if self.allow_non_finite:
            return mf_inputs.nulled(output)
        return failure("non_finite_output", "the model returned NaN or infinity for this row; fix the model, or "
                                            "set serving.allow_non_finite: true in models.yaml to serve it as null")


def failure(code: str, message: str) -> dict:
    """The marker a failed row carries out of the batch; never a valid model output."""
    return {FAILURE_MARK.decode(): {"code": code, "message": message}}
