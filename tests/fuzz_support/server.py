"""A model server implementing the service contract, run in a thread on 127.0.0.1 for the fuzz tests.

Requests are checked by a strict pydantic model built from the signature's columns. It is written
from the contract, not from factory.fuzz, so the tests also use it as the reference validator of the
requests the fuzzer generates.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from datetime import datetime
from typing import Annotated, Any, Awaitable, Callable, Iterator, Optional

import numpy as np
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from factory.fuzz import Column

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, val_json_bytes="base64")
# The field-notes bug: NaN slips past validation and the model crashes on it.
LETS_NAN_THROUGH = ConfigDict(STRICT, allow_inf_nan=True)
RowHook = Callable[[Any], Awaitable[None]]


def _bounded_int(dtype: str) -> Any:
    info = np.iinfo(dtype)
    return Annotated[int, Field(ge=int(info.min), le=int(info.max))]


def _bounded_float(dtype: str) -> Any:
    info = np.finfo(dtype)
    return Annotated[float, Field(ge=float(info.min), le=float(info.max))]


COLUMN_TYPES = {"double": float, "float": _bounded_float("float32"), "long": _bounded_int("int64"),
                "integer": _bounded_int("int32"), "boolean": bool, "string": str, "datetime": datetime, "binary": bytes}


def _tensor_leaf(dtype: str) -> Any:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return _bounded_float(dtype)
    return bool if kind == "b" else _bounded_int(dtype)


def _tensor_row(dims: tuple[int, ...], dtype: str) -> Any:
    if not dims:
        return _tensor_leaf(dtype)
    length = {} if dims[0] == -1 else {"max_length": dims[0]}
    return Annotated[list[_tensor_row(dims[1:], dtype)], Field(min_length=max(dims[0], 1), **length)]


def _column_row(columns: list[Column], config: ConfigDict) -> type[BaseModel]:
    fields = {}
    for index, column in enumerate(columns):
        kind = COLUMN_TYPES[column.type]
        fields[f"column_{index}"] = ((kind, Field(alias=column.name)) if column.required
                                     else (Optional[kind], Field(None, alias=column.name)))
    return create_model("Row", __config__=config, **fields)


def request_model(columns: list[Column], max_batch_size: int, config: ConfigDict = STRICT) -> type[BaseModel]:
    row = _tensor_row(columns[0].shape, columns[0].type) if columns[0].is_tensor else _column_row(columns, config)
    rows = Annotated[list[row], Field(min_length=1, max_length=max_batch_size)]
    return create_model("PredictRequest", __config__=config, inputs=(rows, ...))


def parse_rows(model: type[BaseModel], body: bytes) -> list[Any]:
    """The request's rows as plain values keyed by column name; raises ValidationError."""
    return model.model_validate_json(body).model_dump(by_alias=True)["inputs"]


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [] if value is None else [value]


def predict(row: Any) -> float:
    """The stand-in model: how many values the row holds, as a float."""
    return float(len(_leaves(row)))


def make_app(columns: list[Column], max_batch_size: int, *, max_body_bytes: int, on_row: Optional[RowHook] = None,
             config: ConfigDict = STRICT, answer: Callable[[Any], Any] = predict) -> Callable:
    """A plain ASGI app; on_row sees every validated row before predict, to plant a crash or a hang; `answer`
    replaces the stand-in model's predict (to plant a wrong or a nondeterministic one)."""
    model = request_model(columns, max_batch_size, config)

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if (scope["method"], scope["path"]) != ("POST", "/predict"):
            return await _answer(send, 404, {"detail": "not found"})
        body = await _read_body(receive, max_body_bytes)
        if body is None:
            return await _answer(send, 413, {"detail": f"body over {max_body_bytes} bytes"})
        try:
            rows = parse_rows(model, body)
            for row in rows:
                await (on_row or _noop)(row)
            outputs = [answer(row) for row in rows]
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            status = 400 if errors[0]["type"] == "json_invalid" else 422
            return await _answer(send, status, {"detail": errors})
        except Exception as exc:  # noqa: BLE001 - a model crash is what the fuzzer must see as a 500
            return await _answer(send, 500, {"detail": repr(exc)})
        await _answer(send, 200, outputs)

    return app


async def _noop(row: Any) -> None:
    return None


async def _read_body(receive: Callable, limit: int) -> Optional[bytes]:
    """The whole body, or None when it is over limit (read to the end anyway so the client sees the 413)."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk, more = message.get("body", b""), message.get("more_body", False)
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    return b"".join(chunks) if size <= limit else None


async def _answer(send: Callable, status: int, document: Any) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def serving(app: Callable) -> Iterator[str]:
    """Serve app with uvicorn in a thread on a port the kernel picked; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="critical", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test model server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
