"""Runtime shared by every generated Bento: request rows from the MLflow signature, and the predictor.

Copied verbatim into each model's folder by `factory render`. It must import nothing heavy at module
level: BentoML's arbiter process imports the service file too, and every MiB there is paid per model.
"""

from __future__ import annotations

import datetime
import json
import keyword
import logging
import math
import re
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

import mf_inputs
from mf_http import FAILURE_MARK

LOG = logging.getLogger("mf_runtime")
RESOLVED_FILE = "resolved.json"
INT_BOUNDS = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}


def load_resolved(service_file: str) -> dict:
    """What `factory build` resolved for this model: tags, signature, flavor, registry version."""
    return json.loads((Path(service_file).parent / RESOLVED_FILE).read_text(encoding="utf-8"))


def _column_type(spec: dict) -> Any:
    kind = spec["type"]
    if kind in ("double", "float"):
        return Annotated[float, Field(strict=True, allow_inf_nan=False)]
    if kind in INT_BOUNDS:
        low, high = INT_BOUNDS[kind]
        return Annotated[int, Field(strict=True, ge=low, le=high)]
    if kind == "boolean":
        return Annotated[bool, Field(strict=True)]
    if kind == "string":
        return Annotated[str, Field(strict=True)]
    if kind == "datetime":
        # Strict: an ISO 8601 string only; lax pydantic would also take a number as a Unix time.
        return Annotated[datetime.datetime, Field(strict=True)]
    if kind == "binary":
        return Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
    raise ValueError(f"column {spec.get('name')!r}: MLflow type {kind!r} is not supported by the generated service")


def _field_name(index: int, column: str) -> str:
    # MLflow column names can be anything ("mean radius"); pydantic fields must be identifiers.
    simple = re.sub(r"\W", "_", column)
    if simple.isidentifier() and not keyword.iskeyword(simple) and not simple.startswith("_") and simple == column:
        return column
    return f"col_{index}"


def row_model(inputs: list[dict], name: str = "Row") -> type[BaseModel]:
    """A strict pydantic row model: a bad request is rejected alone, before it can join a batch."""
    if inputs and inputs[0].get("type") == "tensor":
        return _tensor_row(inputs[0]["tensor-spec"])
    fields: dict[str, Any] = {}
    for index, spec in enumerate(inputs):
        column = spec.get("name", f"c{index}")
        annotation = _column_type(spec)
        if spec.get("required", True):
            fields[_field_name(index, column)] = (annotation, Field(alias=column))
        else:
            fields[_field_name(index, column)] = (Optional[annotation], Field(default=None, alias=column))
    config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)
    return create_model(name, __config__=config, **fields)


def _tensor_row(spec: dict) -> Any:
    dtype = spec["dtype"]
    leaf = (Annotated[float, Field(strict=True, allow_inf_nan=False)] if dtype.startswith("float")
            else Annotated[int, Field(strict=True)])
    row: Any = leaf
    for size in reversed(spec["shape"][1:]):
        bounds = {} if size == -1 else {"min_length": size, "max_length": size}
        row = Annotated[list[row], Field(**({"min_length": 1} | bounds))]
    return row


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

    def predict(self, rows: list[Any]) -> list[Any]:
        return self._isolated(rows if self.tensor else [row.model_dump(by_alias=True) for row in rows])

    def _isolated(self, records: list[Any]) -> list[Any]:
        try:
            outputs = self.run(records)
        except Exception as exc:  # the model's own failure, whatever its type
            if len(records) == 1:
                LOG.warning("the model raised on one row", exc_info=True)
                return [failure("model_error", f"the model raised {type(exc).__name__}: {str(exc)[:300]}")]
            middle = len(records) // 2
            return self._isolated(records[:middle]) + self._isolated(records[middle:])
        return [self._finite(output) for output in outputs]

    def run(self, records: list[Any]) -> list[Any]:
        """The model on the whole batch, raising what it raises. Records are dicts keyed by signature
        column (tensor rows are lists); `factory build` checks a compiled form through this too."""
        import numpy as np

        if self.model.wants == "feeds":
            batch = mf_inputs.feeds(records, self.inputs, self.model.feeds)
        elif self.tensor:
            batch = mf_inputs.tensor(records, self.inputs)
        elif self.model.wants == "frame":
            batch = mf_inputs.frame(records, self.inputs)
        else:
            batch = mf_inputs.array(records, self.inputs)
        outputs = mf_inputs.as_outputs(self.model.predict(batch))
        if not isinstance(outputs, list) or len(outputs) != len(records):
            raise ValueError(f"the model returned {np.shape(outputs)} outputs for {len(records)} rows")
        return outputs

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
