"""POST /predict (JSON) answered by the same code BentoML's HTTP stack would run, without that stack.

BentoML's path for one request goes through Starlette's routing and exception middlewares,
OpenTelemetry's ASGI middleware, BentoML's request context and IO descriptors before the API method
runs: on the served example models that machinery cost more CPU per request than a small model's
predict (BENCHMARKS.md, "Latency and capacity"). Here the body is validated with the very input model
BentoML generated for the API (`model_validate_json`, as its JSON serde does), or first by mf_decode's
shortcut for a signature of named scalar columns, and handed to the service's batcher; everything else
(other paths, other content types, probes) goes to the app behind it (`mf_serve.Pod` in the pod's one
process, inside `mf_http.ErrorShape`). `reply` does a request's work without yielding to the event loop, so the
pod's protocol (mf_protocol) answers most requests with it directly, without the ASGI path above it.
Its own answers keep ErrorShape's rules (the one error shape, the body limit, a request holding a failed
row answered 500) without ErrorShape's wrapping: that buffers every response and scans, and for a
failure re-parses, its JSON, which the outputs list answers directly. Outputs are encoded with orjson:
21 µs with `json.dumps` for 32 rows of two probabilities, 3 µs (BENCHMARKS.md, "Issue 14, full
batches"). Copied verbatim into each model's folder by `factory render`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import Any, Callable, Optional

import msgspec
import orjson

import mf_http

LOG = logging.getLogger("mf_fast")
JSON = b"application/json"


class FastPredict:
    """`submit()` returns the running service's `answer`, or None before the service exists. `answer(rows, params)`
    gives the outputs, an awaitable of them (the request queued), or an mf_http.Reply (a refusal)."""

    def __init__(self, app: Any, input_model: Any, submit: Callable[[], Optional[Callable]], max_bytes: int,
                 path: str = "/predict", rows_of: Optional[Callable[[bytes], list]] = None):
        self.app = app
        self.input_model = input_model
        self.rows_of = rows_of  # mf_decode.decoder's, when the signature has one
        self.submit = submit
        self.max_bytes = max_bytes
        self.path = path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        declared = self.ours(scope)
        if declared is None or self.submit() is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._body(receive, declared)
        except mf_http.BodyTooLarge as refused:
            await mf_http.refuse_too_large(scope, receive, send, self.max_bytes, refused)
            return
        reply = self.reply(body)
        if isinstance(reply, asyncio.Future):
            await asyncio.wait([reply])
            reply = finished(reply)
        await _answer(send, reply)

    def reply(self, body: bytes) -> "mf_http.Reply | asyncio.Future":
        """The whole answer to a POST /predict `body` when the model ran at once or the body was refused, else a
        future of the outputs (`finished` makes it the answer). Never yields to the event loop."""
        try:
            rows, params = self._decoded(body or b"{}")
        except ValueError as exc:  # pydantic's ValidationError, with the JSON path of the first bad value
            errors = exc.errors(include_context=False, include_input=False) if hasattr(exc, "errors") else []
            return mf_http.Reply(400, mf_http._validation(errors) if errors else mf_http.error_body(
                "invalid_input", str(exc)[:300]))
        try:
            answered = self.submit()(rows, params)
        except Exception as exc:  # a defect of ours, not the model's (the predictor isolates those)
            return settled(exc)
        return asyncio.ensure_future(answered) if inspect.isawaitable(answered) else settled(answered)

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

    def ours(self, scope: dict) -> Optional[bytes]:
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


def settled(answered: Any) -> mf_http.Reply:
    """The answer to what the service gave: outputs (200, or 500 for the first row that failed: the request fails as a
    whole), a refusal as it is, an exception (a defect of ours; the predictor isolates the model's) a 500."""
    if isinstance(answered, mf_http.Reply):
        return answered
    if isinstance(answered, list):
        failed = mf_http.row_failure(answered)
        if failed is not None:
            return mf_http.Reply(500, failed)
        try:
            return mf_http.Reply(200, _dumps(answered))
        except (TypeError, ValueError) as exc:  # outputs JSON has no form for
            answered = exc
    LOG.error("predict failed: %r", answered, exc_info=answered if isinstance(answered, BaseException) else None)
    return mf_http.Reply(500, mf_http.error_body("internal", "the model server failed; see its log"))


def finished(future: asyncio.Future) -> mf_http.Reply:
    """`settled` for a done future of outputs (`FastPredict.reply`'s)."""
    return settled(future.exception() or future.result())


def _dumps(outputs: list) -> bytes:
    try:  # as json.dumps would: numpy scalars a pyfunc model leaves in its outputs, records' non-string keys
        return orjson.dumps(outputs, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # integers beyond 64 bits: valid JSON, refused by orjson
        return json.dumps(outputs).encode()


async def _answer(send: Any, reply: mf_http.Reply) -> None:
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.framed()})
    await send({"type": "http.response.body", "body": reply.body})
