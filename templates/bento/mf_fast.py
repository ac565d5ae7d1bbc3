"""POST /predict (JSON) answered by the same code BentoML's HTTP stack would run, without that stack.

BentoML's path for one request goes through Starlette's routing and exception middlewares,
OpenTelemetry's ASGI middleware, BentoML's request context and IO descriptors before the API method
runs: on the served example models that machinery cost more CPU per request than a small model's
predict (BENCHMARKS.md, "Latency and capacity"). Here the body is validated with the very input model
BentoML generated for the API (`model_validate_json`, as its JSON serde does) and handed to the
service's batcher; everything else (other paths, other content types, probes) goes to the app behind
it (`mf_serve.Pod` in the pod's one process).
Wrapped in `mf_http.ErrorShape`, so answers keep the one error shape, the body limit and per-row
failures. Copied verbatim into each model's folder by `factory render`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional

import mf_http

LOG = logging.getLogger("mf_fast")
JSON = b"application/json"


class FastPredict:
    """`submit()` returns the running service's batcher submit, or None before the service exists."""

    def __init__(self, app: Any, input_model: Any, submit: Callable[[], Optional[Callable]], path: str = "/predict"):
        self.app = app
        self.input_model = input_model
        self.submit = submit
        self.path = path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        submit = self.submit() if self._ours(scope) else None
        if submit is None:
            await self.app(scope, receive, send)
            return
        body = await _body(receive)
        try:
            request = self.input_model.model_validate_json(body or b"{}")
        except ValueError as exc:  # pydantic's ValidationError, with the JSON path of the first bad value
            errors = exc.errors(include_context=False, include_input=False) if hasattr(exc, "errors") else []
            await _answer(send, 400, mf_http._validation(errors) if errors else mf_http.error_body(
                "invalid_input", str(exc)[:300]))
            return
        try:
            outputs = await submit(request.inputs)
        except Exception:  # a defect of ours, not the model's (the predictor isolates those)
            LOG.exception("predict failed")
            await _answer(send, 500, mf_http.error_body("internal", "the model server failed; see its log"))
            return
        if isinstance(outputs, list):
            await _answer(send, 200, json.dumps(outputs).encode())
        else:  # a finished response (mf_http.overloaded)
            await outputs(scope, receive, send)

    def _ours(self, scope: dict) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return False
        content_type = dict(scope.get("headers") or []).get(b"content-type", JSON)
        return content_type.split(b";")[0].strip().lower() == JSON


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
