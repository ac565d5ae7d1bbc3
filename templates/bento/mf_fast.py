"""POST /predict (JSON) answered by the same code BentoML's HTTP stack would run, without that stack.

BentoML's path for one request goes through Starlette's routing and exception middlewares,
OpenTelemetry's ASGI middleware, BentoML's request context and IO descriptors before the API method
runs: on the served example models that machinery cost more CPU per request than a small model's
predict (BENCHMARKS.md, "Latency and capacity"). Here the body is validated with the very input model
BentoML generated for the API (`model_validate_json`, as its JSON serde does), or first by mf_decode's
shortcut for a signature of named scalar columns, and handed to the service's batcher; everything else
(other paths, other content types, probes) goes to the app behind it (`mf_serve.Pod` in the pod's one
process, inside `mf_http.ErrorShape`).
Its own answers keep ErrorShape's rules (the one error shape, the body limit, a request holding a failed
row answered 500) without ErrorShape's wrapping: that buffers every response and scans, and for a
failure re-parses, its JSON, which the outputs list answers directly. Outputs are encoded with orjson:
21 µs with `json.dumps` for 32 rows of two probabilities, 3 µs (BENCHMARKS.md, "Issue 14, full
batches"). Copied verbatim into each model's folder by `factory render`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional

import msgspec
import orjson

import mf_http

LOG = logging.getLogger("mf_fast")
JSON = b"application/json"


class FastPredict:
    """`submit()` returns the running service's batcher submit, or None before the service exists."""

    def __init__(self, app: Any, input_model: Any, submit: Callable[[], Optional[Callable]], max_bytes: int,
                 path: str = "/predict", rows_of: Optional[Callable[[bytes], list]] = None):
        self.app = app
        self.input_model = input_model
        self.rows_of = rows_of  # mf_decode.decoder's, when the signature has one
        self.submit = submit
        self.max_bytes = max_bytes
        self.path = path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        declared = self._ours(scope)
        submit = None if declared is None else self.submit()
        if submit is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._body(receive, declared)
        except mf_http.BodyTooLarge as refused:
            await mf_http.refuse_too_large(scope, receive, send, self.max_bytes, refused)
            return
        try:
            rows, params = self._decoded(body or b"{}")
        except ValueError as exc:  # pydantic's ValidationError, with the JSON path of the first bad value
            errors = exc.errors(include_context=False, include_input=False) if hasattr(exc, "errors") else []
            await _answer(send, 400, mf_http._validation(errors) if errors else mf_http.error_body(
                "invalid_input", str(exc)[:300]))
            return
        try:
            outputs = await submit(rows, params)
            status, answer = _encoded(outputs) if isinstance(outputs, list) else (503, outputs)
        except Exception:  # a defect of ours, not the model's (the predictor isolates those)
            LOG.exception("predict failed")
            await _answer(send, 500, mf_http.error_body("internal", "the model server failed; see its log"))
            return
        if isinstance(answer, bytes):
            await _answer(send, status, answer)
        else:  # a finished response (mf_http.overloaded)
            await answer(scope, receive, send)

    def _decoded(self, body: bytes) -> tuple[list, Any]:
        """The rows and params: mf_decode's shortcut when it takes the body, else the API's pydantic model, which
        raises the error a bad body gets."""
        if self.rows_of is not None:
            try:
                return self.rows_of(body), None
            except msgspec.MsgspecError:
                pass
        request = self.input_model.model_validate_json(body)
        return request.inputs, getattr(request, "params", None)

    def _ours(self, scope: dict) -> Optional[bytes]:
        """The declared content-length (b"" when none) of a JSON POST to the predict path; None otherwise."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return None
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", JSON)
        return headers.get(b"content-length", b"") if content_type.split(b";")[0].strip().lower() == JSON else None

    async def _body(self, receive: Any, declared: bytes) -> bytes:
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise mf_http.BodyTooLarge(declared=int(declared))
        chunks, seen = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                raise mf_http.BodyTooLarge(seen=seen, more=message.get("more_body", False))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _encoded(outputs: list) -> tuple[int, bytes]:
    """200 and the outputs, or 500 for the first row that failed (the request fails as a whole)."""
    failed = mf_http.row_failure(outputs)
    return (200, _dumps(outputs)) if failed is None else (500, failed)


def _dumps(outputs: list) -> bytes:
    try:  # as json.dumps would: numpy scalars a pyfunc model leaves in its outputs, records' non-string keys
        return orjson.dumps(outputs, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # integers beyond 64 bits: valid JSON, refused by orjson
        return json.dumps(outputs).encode()


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
