"""Runtime shared by every generated Bento: request rows from the MLflow signature, and a lean predictor.

Copied verbatim into each model's folder by `factory render`. It must import nothing heavy at module
level: BentoML's arbiter process imports the service file too, and every MiB there is paid per model.
"""

from __future__ import annotations

import base64
import datetime
import json
import keyword
import math
import re
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

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
        return datetime.datetime
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


def column_order(inputs: list[dict]) -> list[tuple[str, str]]:
    """(field name, MLflow type) in signature order, as the model expects its columns."""
    if inputs and inputs[0].get("type") == "tensor":
        return []
    return [(_field_name(i, spec.get("name", f"c{i}")), spec["type"]) for i, spec in enumerate(inputs)]


class Predictor:
    """Loads the model natively (no mlflow import: ~110 MiB less per process) where the flavor allows."""

    def __init__(self, mlflow_model_dir: str, resolved: dict):
        self.columns = column_order(resolved["signature"]["inputs"])
        self.numeric = all(kind in ("double", "float", "long", "integer", "boolean") for _, kind in self.columns)
        self.method = resolved["flavor"].get("predict_fn", "predict")
        self.model = _load(Path(mlflow_model_dir), resolved["flavor"])

    def predict(self, rows: list[Any]) -> list[Any]:
        import numpy as np

        if not self.columns:
            batch = np.asarray(rows)
        else:
            batch = np.array([[_cell(getattr(row, name), kind) for name, kind in self.columns] for row in rows],
                             dtype=np.float64 if self.numeric else object)
        output = getattr(self.model, self.method)(batch)
        return [_plain(value) for value in np.asarray(output).tolist()]


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return math.nan if kind in ("double", "float", "long", "integer") else None
    if kind == "binary":
        return base64.b64decode(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _load(model_dir: Path, flavor: dict) -> Any:
    if flavor.get("loader") == "skops":
        import skops.io

        return skops.io.load(model_dir / flavor["model_file"], trusted=flavor.get("trusted_types", []))
    import mlflow.pyfunc  # other flavors: MLflow's own loader, at its memory cost

    return mlflow.pyfunc.load_model(str(model_dir))


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with a JSON 413 before they are parsed."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def counting_receive() -> dict:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                refused = True
                raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge:
            if refused:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": f"request body is larger than {self.max_bytes} bytes; send fewer rows "
                                    "per request"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
